//! Notifications: the `[notify.NAME]` model, the event every notifier hears, which notifier
//! wants which signal, body templates, the HMAC signature, and delivery (attempts, backoff, one
//! time budget, never an error for the caller). Senders (HTTP, a command) are drivers; see
//! `docs/monitoring.md` for the contract.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::units::Span;
use crate::{Error, Result};

/// What an event says happened (`on = [...]` names these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// An operation succeeded.
    Success,
    /// An operation failed (a backup on a storage, a verify, a prune, a storage read).
    Failure,
    /// A new or newest backup is suspect.
    Suspect,
    /// A restore drill failed (restore, a check, or its RTO goal).
    DrillFailure,
    /// A backup is missing or stale, or the last drill is overdue.
    Stale,
    /// The guard refused a destructive command.
    Refused,
}

impl EventKind {
    /// Every kind, in documentation order.
    pub const ALL: [EventKind; 6] = [
        EventKind::Success,
        EventKind::Failure,
        EventKind::Suspect,
        EventKind::DrillFailure,
        EventKind::Stale,
        EventKind::Refused,
    ];

    /// The name in events and in `on`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Success => "success",
            EventKind::Failure => "failure",
            EventKind::Suspect => "suspect",
            EventKind::DrillFailure => "drill-failure",
            EventKind::Stale => "stale",
            EventKind::Refused => "refused",
        }
    }
}

/// One event, as a notifier receives it (the documented JSON of docs/monitoring.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    pub event: EventKind,
    /// What sent it: `backup`, `drill`, `verify`, `prune`, `guard`, `status`, `daemon`.
    pub operation: String,
    /// The job, when it is about one.
    pub job: Option<String>,
    /// The storage, when it is about one.
    pub storage: Option<String>,
    /// The backup, when it is about one.
    pub backup_id: Option<String>,
    /// The host drkit runs on.
    pub host: String,
    /// When (RFC 3339, UTC).
    pub time: String,
    /// One line: what happened and what to do. No secrets (messages are already redacted).
    pub message: String,
    /// Numbers by name (`raw_bytes`, `duration_seconds`, `rto_seconds`, `removed`, ...).
    pub figures: BTreeMap<String, f64>,
    /// The drkit version that sent it.
    pub drkit_version: String,
}

impl Event {
    /// A new event of `operation` at `now`, on this host.
    pub fn new(
        event: EventKind,
        operation: &str,
        job: Option<&str>,
        message: impl Into<String>,
        now: DateTime<Utc>,
    ) -> Event {
        Event {
            event,
            operation: operation.to_string(),
            job: job.map(str::to_string),
            storage: None,
            backup_id: None,
            host: crate::hostname(),
            time: now.to_rfc3339_opts(SecondsFormat::Secs, true),
            message: crate::one_line(&message.into()),
            figures: BTreeMap::new(),
            drkit_version: crate::VERSION.to_string(),
        }
    }

    /// The same, about one storage.
    pub fn on_storage(mut self, storage: &str) -> Event {
        self.storage = Some(storage.to_string());
        self
    }

    /// The same, about one backup.
    pub fn of_backup(mut self, id: &str) -> Event {
        self.backup_id = Some(id.to_string());
        self
    }

    /// The same, with one more figure.
    pub fn figure(mut self, name: &str, value: f64) -> Event {
        self.figures.insert(name.to_string(), value);
        self
    }

    /// The event as a JSON body.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an event serializes")
    }
}

/// What a notifier can be told: an event, or the start and end of a run (for pings).
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    /// A run of `operation` for `job` started.
    Started {
        /// `backup`, `drill`, ...
        operation: String,
        /// The job.
        job: String,
    },
    /// A run of `operation` for `job` ended; `ok` false with why.
    Finished {
        /// `backup`, `drill`, ...
        operation: String,
        /// The job.
        job: String,
        /// Whether it succeeded everywhere (a suspect backup is not ok).
        ok: bool,
        /// One line.
        message: String,
    },
    /// Something happened.
    Event(Event),
}

impl Signal {
    /// The job it is about.
    pub fn job(&self) -> Option<&str> {
        match self {
            Signal::Started { job, .. } | Signal::Finished { job, .. } => Some(job),
            Signal::Event(e) => e.job.as_deref(),
        }
    }
}

/// The kinds of notifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifierKind {
    /// A JSON (or templated) POST.
    Webhook,
    /// A dead-man switch in the healthchecks.io convention.
    Ping,
    /// A program with the event JSON on stdin.
    Command,
}

impl NotifierKind {
    /// The name in `type = "..."`.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifierKind::Webhook => "webhook",
            NotifierKind::Ping => "ping",
            NotifierKind::Command => "command",
        }
    }
}

/// The default delivery budget of one event to one notifier (all attempts together).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times delivery is tried within the budget.
pub const ATTEMPTS: u32 = 3;

/// One `[notify.NAME]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifierConfig {
    /// `webhook`, `ping` or `command`.
    #[serde(rename = "type")]
    pub kind: NotifierKind,
    /// The endpoint (webhook, ping).
    #[serde(default)]
    pub url: Option<String>,
    /// Extra HTTP headers (webhook); values are never printed.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// HMAC-SHA256 key: the webhook carries `X-Drkit-Signature: sha256=<hex>` of its body.
    #[serde(default)]
    pub secret: Option<String>,
    /// The body, with `{{field}}` placeholders (webhook; default: the event JSON).
    #[serde(default)]
    pub template: Option<String>,
    /// The body's media type (webhook; default `application/json`).
    #[serde(default)]
    pub content_type: Option<String>,
    /// Which events it hears (webhook, command; default: all but success).
    #[serde(default)]
    pub on: Option<Vec<EventKind>>,
    /// The delivery budget of one event, all attempts together (default 10 s).
    #[serde(default)]
    pub timeout: Option<Span>,
    /// The program and its arguments (command); no shell.
    #[serde(default)]
    pub command: Option<Vec<String>>,
}

impl NotifierConfig {
    /// Check the keys that `kind` needs and refuse those it would ignore. `what` names the
    /// table (`notify.ops`).
    pub fn validate(&self, what: &str) -> Result<()> {
        let refuse = |key: &str, set: bool| -> Result<()> {
            if set {
                return Err(Error::config(format!(
                    "{what}: `{key}` does not apply to type = \"{}\"",
                    self.kind.as_str()
                )));
            }
            Ok(())
        };
        match self.kind {
            NotifierKind::Webhook | NotifierKind::Ping => {
                let url = self.url.as_deref().unwrap_or_default();
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(Error::config(format!(
                        "{what}: `url` must be an http:// or https:// URL"
                    )));
                }
                refuse("command", self.command.is_some())?;
            }
            NotifierKind::Command => {
                if self
                    .command
                    .as_ref()
                    .is_none_or(|c| c.is_empty() || c[0].is_empty())
                {
                    return Err(Error::config(format!(
                        "{what}: `command` must name a program, e.g. [\"/usr/bin/mail\", \"-s\", \"drkit\", \"ops@example.com\"]"
                    )));
                }
                refuse("url", self.url.is_some())?;
            }
        }
        if self.kind != NotifierKind::Webhook {
            refuse("headers", !self.headers.is_empty())?;
            refuse("secret", self.secret.is_some())?;
            refuse("template", self.template.is_some())?;
            refuse("content_type", self.content_type.is_some())?;
        }
        refuse("on", self.kind == NotifierKind::Ping && self.on.is_some())?;
        if let Some(t) = &self.timeout {
            let d = t.duration();
            if d.is_zero() || d > Duration::from_secs(300) {
                return Err(Error::config(format!(
                    "{what}: `timeout` must be between 1s and 5m"
                )));
            }
        }
        Ok(())
    }

    /// The delivery budget.
    pub fn timeout(&self) -> Duration {
        self.timeout
            .as_ref()
            .map(|s| s.duration())
            .unwrap_or(DEFAULT_TIMEOUT)
    }

    /// Whether this notifier hears `signal`. Webhooks and commands hear events whose kind is
    /// in `on` (default: all but success); pings hear the start and end of backup runs.
    pub fn wants(&self, signal: &Signal) -> bool {
        match (self.kind, signal) {
            (NotifierKind::Ping, Signal::Started { operation, .. })
            | (NotifierKind::Ping, Signal::Finished { operation, .. }) => operation == "backup",
            (NotifierKind::Ping, Signal::Event(_)) => false,
            (_, Signal::Event(e)) => match &self.on {
                Some(on) => on.contains(&e.event),
                None => e.event != EventKind::Success,
            },
            (_, _) => false,
        }
    }

    /// Whether the body is JSON (templates escape values as JSON string content then).
    pub fn json_body(&self) -> bool {
        self.content_type
            .as_deref()
            .is_none_or(|c| c.to_ascii_lowercase().contains("json"))
    }
}

/// The body of a webhook for `event`: the template with `{{field}}` replaced, or the event
/// JSON. Written by hand rather than with a template engine: only field substitution is
/// offered, so that a template (from a config) can do nothing else.
pub fn render_body(template: Option<&str>, event: &Event, json: bool) -> String {
    let Some(template) = template else {
        return event.to_json();
    };
    let value = |name: &str| -> String {
        let s = match name {
            "event" => event.event.as_str().to_string(),
            "operation" => event.operation.clone(),
            "job" => event.job.clone().unwrap_or_default(),
            "storage" => event.storage.clone().unwrap_or_default(),
            "backup_id" => event.backup_id.clone().unwrap_or_default(),
            "host" => event.host.clone(),
            "time" => event.time.clone(),
            "message" => event.message.clone(),
            "drkit_version" => event.drkit_version.clone(),
            "event_json" => return event.to_json(),
            other => match other.strip_prefix("figures.") {
                Some(f) => event
                    .figures
                    .get(f)
                    .map(|v| format_figure(*v))
                    .unwrap_or_default(),
                None => String::new(),
            },
        };
        if json {
            let quoted = serde_json::to_string(&s).expect("a string serializes");
            quoted[1..quoted.len() - 1].to_string()
        } else {
            s
        }
    };
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        match after.find("}}") {
            Some(close) => {
                out.push_str(&value(after[..close].trim()));
                rest = &after[close + 2..];
            }
            None => {
                out.push_str(&rest[open..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// A figure as text: integers without a fraction.
fn format_figure(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    }
}

/// The `X-Drkit-Signature` value of `body` under `secret`: `sha256=` and the hex HMAC-SHA256.
pub fn signature(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A notifier's URL as it may be printed: the scheme and host only (webhook and ping URLs
/// carry their secret in the path, the query or the user part).
pub fn show_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(url)".into();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let host = &rest[..end];
    let host = host.rsplit_once('@').map(|(_, h)| h).unwrap_or(host);
    let more = if end < rest.len() { "/..." } else { "" };
    format!("{scheme}://{host}{more}")
}

/// What a ping says, and where (the healthchecks.io convention): `URL/start`, `URL`,
/// `URL/fail`. `None` for signals a ping does not send.
pub fn ping_target(base: &str, signal: &Signal) -> Option<(String, Option<String>)> {
    let base = base.trim_end_matches('/');
    match signal {
        Signal::Started { .. } => Some((format!("{base}/start"), None)),
        Signal::Finished { ok: true, .. } => Some((base.to_string(), None)),
        Signal::Finished { message, .. } => Some((format!("{base}/fail"), Some(message.clone()))),
        Signal::Event(_) => None,
    }
}

/// A way to tell someone (a webhook, a ping, a command). One call is one attempt.
#[async_trait::async_trait]
pub trait Notifier: Send + Sync {
    /// Its name (`notify.NAME`).
    fn name(&self) -> &str;
    /// Its config.
    fn config(&self) -> &NotifierConfig;
    /// One attempt at delivering `signal`. The error's message must carry no secret.
    async fn send(&self, signal: &Signal) -> Result<()>;
}

/// A delivery that did not succeed.
#[derive(Debug, Clone, PartialEq)]
pub struct Undelivered {
    /// The notifier.
    pub notifier: String,
    /// Why, in one line (no secret).
    pub why: String,
}

/// The waits between attempts.
const BACKOFF: [Duration; 2] = [Duration::from_millis(500), Duration::from_millis(1000)];

/// Deliver `signals` to every notifier in `notifiers` that wants them: notifiers
/// concurrently, each its signals in order, each signal [`ATTEMPTS`] tries with backoff inside
/// the notifier's timeout. Never fails; returns what was not delivered (the caller warns and
/// counts).
pub async fn deliver(notifiers: &[Arc<dyn Notifier>], signals: &[Signal]) -> Vec<Undelivered> {
    let work = notifiers.iter().map(|n| async move {
        let mut failed = Vec::new();
        for signal in signals.iter().filter(|s| n.config().wants(s)) {
            if let Some(why) = deliver_one(n.as_ref(), signal).await {
                failed.push(Undelivered {
                    notifier: n.name().to_string(),
                    why,
                });
            }
        }
        failed
    });
    futures::future::join_all(work)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// One signal to one notifier: `None` when delivered, else why not.
async fn deliver_one(n: &dyn Notifier, signal: &Signal) -> Option<String> {
    let budget = n.config().timeout();
    let attempts = async {
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            match n.send(signal).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::debug!(
                        notifier = n.name(),
                        attempt = attempt + 1,
                        "delivery failed: {e}"
                    );
                    last = Some(e);
                }
            }
            if let Some(wait) = BACKOFF.get(attempt as usize) {
                tokio::time::sleep(*wait).await;
            }
        }
        Err(last.expect("at least one attempt"))
    };
    match tokio::time::timeout(budget, attempts).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e} (after {ATTEMPTS} attempts)")),
        Err(_) => Some(format!(
            "no answer within {}",
            crate::ops::health::human_age(budget)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> NotifierConfig {
        toml::from_str(text).expect("parses")
    }

    fn event(kind: EventKind) -> Event {
        Event::new(
            kind,
            "backup",
            Some("app"),
            "it \"broke\"\nbadly",
            "2026-12-03T02:00:00Z".parse().unwrap(),
        )
        .on_storage("local")
        .figure("raw_bytes", 1234.0)
    }

    #[test]
    fn who_hears_what() {
        let hook = cfg("type = \"webhook\"\nurl = \"http://x\"");
        let all = cfg("type = \"webhook\"\nurl = \"http://x\"\non = [\"success\", \"failure\"]");
        let ping = cfg("type = \"ping\"\nurl = \"http://x\"");
        let started = |op: &str| Signal::Started {
            operation: op.into(),
            job: "app".into(),
        };
        let cases: Vec<(&NotifierConfig, Signal, bool)> = vec![
            (&hook, Signal::Event(event(EventKind::Failure)), true),
            (&hook, Signal::Event(event(EventKind::Success)), false),
            (&hook, Signal::Event(event(EventKind::Stale)), true),
            (&hook, started("backup"), false),
            (&all, Signal::Event(event(EventKind::Success)), true),
            (&all, Signal::Event(event(EventKind::Suspect)), false),
            (&ping, started("backup"), true),
            (&ping, started("drill"), false),
            (&ping, Signal::Event(event(EventKind::Failure)), false),
        ];
        for (i, (c, s, want)) in cases.into_iter().enumerate() {
            assert_eq!(c.wants(&s), want, "case {i}");
        }
    }

    #[test]
    fn validation() {
        let cases = [
            ("type = \"webhook\"\nurl = \"https://h/x\"", None),
            ("type = \"webhook\"", Some("`url` must be")),
            (
                "type = \"webhook\"\nurl = \"ftp://h\"",
                Some("`url` must be"),
            ),
            (
                "type = \"ping\"\nurl = \"http://h\"\non = [\"success\"]",
                Some("`on`"),
            ),
            (
                "type = \"ping\"\nurl = \"http://h\"\ntemplate = \"x\"",
                Some("`template`"),
            ),
            ("type = \"command\"\ncommand = []", Some("`command` must")),
            (
                "type = \"command\"\ncommand = [\"mail\"]\nurl = \"http://h\"",
                Some("`url`"),
            ),
            (
                "type = \"command\"\ncommand = [\"mail\"]\ntimeout = \"0s\"",
                Some("`timeout`"),
            ),
        ];
        for (text, want) in cases {
            let r = cfg(text).validate("notify.x");
            match want {
                None => assert!(r.is_ok(), "{text}: {r:?}"),
                Some(w) => {
                    let e = r.expect_err(text).to_string();
                    assert!(e.contains(w), "{text}: {e}");
                }
            }
        }
        assert!(toml::from_str::<NotifierConfig>("type = \"mail\"").is_err());
        assert!(
            toml::from_str::<NotifierConfig>("type = \"ping\"\nurl=\"http://h\"\nx = 1").is_err()
        );
    }

    #[test]
    fn templates() {
        let e = event(EventKind::Failure);
        let cases = [
            (
                "{\"text\": \"{{job}}: {{message}}\"}",
                true,
                "{\"text\": \"app: it \\\"broke\\\" badly\"}",
            ),
            ("{{job}}: {{message}}", false, "app: it \"broke\" badly"),
            (
                "{{ event }} {{figures.raw_bytes}} {{figures.none}}|{{nope}}",
                false,
                "failure 1234 |",
            ),
            (
                "{{backup_id}}-{{storage}} {{unclosed",
                false,
                "-local {{unclosed",
            ),
        ];
        for (t, json, want) in cases {
            assert_eq!(render_body(Some(t), &e, json), want, "{t}");
        }
        let body = render_body(Some("{\"text\": \"{{message}}\"}"), &e, true);
        let v: serde_json::Value = serde_json::from_str(&body).expect("stays JSON");
        assert_eq!(v["text"], "it \"broke\" badly");
        let whole: Event = serde_json::from_str(&render_body(None, &e, true)).unwrap();
        assert_eq!(whole, e);
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        for field in [
            "event",
            "operation",
            "job",
            "storage",
            "backup_id",
            "host",
            "time",
            "message",
            "figures",
            "drkit_version",
        ] {
            assert!(v.get(field).is_some(), "{field}");
        }
        assert_eq!(v["event"], "failure");
        assert_eq!(v["time"], "2026-12-03T02:00:00Z");
    }

    #[test]
    fn urls_lose_their_secrets() {
        let cases = [
            (
                "https://hooks.slack.com/services/T0/B0/SECRET",
                "https://hooks.slack.com/...",
            ),
            ("http://user:pw@h:8080?token=SECRET", "http://h:8080/..."),
            ("http://h:1", "http://h:1"),
            ("nonsense", "(url)"),
        ];
        for (url, want) in cases {
            assert_eq!(show_url(url), want);
        }
    }

    #[test]
    fn hmac_signature() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn pings() {
        let fin = |ok| Signal::Finished {
            operation: "backup".into(),
            job: "a".into(),
            ok,
            message: "m".into(),
        };
        let start = Signal::Started {
            operation: "backup".into(),
            job: "a".into(),
        };
        assert_eq!(
            ping_target("http://h/p/", &start),
            Some(("http://h/p/start".into(), None))
        );
        assert_eq!(
            ping_target("http://h/p", &fin(true)),
            Some(("http://h/p".into(), None))
        );
        assert_eq!(
            ping_target("http://h/p", &fin(false)),
            Some(("http://h/p/fail".into(), Some("m".into())))
        );
    }

    struct Flaky {
        cfg: NotifierConfig,
        fails: std::sync::atomic::AtomicU32,
        calls: std::sync::atomic::AtomicU32,
        hang: bool,
    }

    #[async_trait::async_trait]
    impl Notifier for Flaky {
        fn name(&self) -> &str {
            "flaky"
        }
        fn config(&self) -> &NotifierConfig {
            &self.cfg
        }
        async fn send(&self, _: &Signal) -> Result<()> {
            use std::sync::atomic::Ordering::SeqCst;
            self.calls.fetch_add(1, SeqCst);
            if self.hang {
                std::future::pending::<()>().await;
            }
            if self.fails.load(SeqCst) > 0 {
                self.fails.fetch_sub(1, SeqCst);
                return Err(Error::new(crate::ErrorKind::Storage, "HTTP 500"));
            }
            Ok(())
        }
    }

    fn flaky(fails: u32, hang: bool) -> Arc<Flaky> {
        Arc::new(Flaky {
            cfg: cfg("type = \"webhook\"\nurl = \"http://x\"\ntimeout = \"5s\""),
            fails: fails.into(),
            calls: 0.into(),
            hang,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn delivery_retries_within_the_budget() {
        use std::sync::atomic::Ordering::SeqCst;
        let s = Signal::Event(event(EventKind::Failure));
        let cases = [
            (0, false, 1, true),
            (2, false, 3, true),
            (5, false, 3, false),
            (0, true, 1, false),
        ];
        for (fails, hang, calls, delivered) in cases {
            let n = flaky(fails, hang);
            let list: Vec<Arc<dyn Notifier>> = vec![n.clone()];
            let before = tokio::time::Instant::now();
            let out = deliver(&list, std::slice::from_ref(&s)).await;
            assert_eq!(n.calls.load(SeqCst), calls, "{fails} {hang}");
            assert_eq!(out.is_empty(), delivered, "{fails} {hang}: {out:?}");
            assert!(
                before.elapsed() <= Duration::from_secs(5),
                "within the budget"
            );
            if hang {
                assert!(out[0].why.contains("no answer within 5s"), "{out:?}");
            }
        }
        // Not wanted: not called.
        let n = flaky(0, false);
        let list: Vec<Arc<dyn Notifier>> = vec![n.clone()];
        assert!(deliver(&list, &[Signal::Event(event(EventKind::Success))])
            .await
            .is_empty());
        assert_eq!(n.calls.load(SeqCst), 0);
    }
}
