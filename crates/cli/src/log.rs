//! The one subscriber of drkit's `tracing` events: every message on stderr (the CLI's own
//! and the library's), as text lines or as JSON objects (`--log-format json`), with the level
//! that `-q` / `-v` choose. docs/monitoring.md documents the fields.
//!
//! Written as a small layer rather than `tracing-subscriber`'s formatters: the text lines
//! must stay exactly what drkit always printed (`WARNING: ...`, `error: ...`), and the JSON
//! lines carry only the documented fields (an absent job is absent, not `""`).

use std::io::Write;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human lines (the daemon adds the time).
    Text,
    /// One JSON object per line.
    Json,
}

/// The stderr layer.
pub struct Stderr {
    format: Format,
    max: Level,
    timestamps: bool,
}

/// Install the subscriber: `quiet` shows errors only, each `verbose` one more level.
pub fn init(format: Format, quiet: bool, verbose: u8, timestamps: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    let max = match (quiet, verbose) {
        (true, _) => Level::ERROR,
        (false, 0) => Level::INFO,
        (false, 1) => Level::DEBUG,
        _ => Level::TRACE,
    };
    let layer = Stderr {
        format,
        max,
        timestamps,
    };
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer));
}

/// The fields of one event, as JSON values; the message apart.
#[derive(Default)]
struct Fields {
    message: String,
    rest: serde_json::Map<String, serde_json::Value>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else if !value.is_empty() {
            self.rest.insert(field.name().into(), value.into());
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            let rounded = (value * 1000.0).round() / 1000.0;
            self.rest.insert(field.name().into(), rounded.into());
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.rest.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.rest.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.rest.insert(field.name().into(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // `format_args!` messages arrive here; their Debug is their Display.
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else if !text.is_empty() {
            self.rest.insert(field.name().into(), text.into());
        }
    }
}

impl<S: Subscriber> Layer<S> for Stderr {
    fn enabled(&self, meta: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        // drkit's own events only: the HTTP and cloud crates log their internals.
        *meta.level() <= self.max && meta.target().starts_with("drkit")
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let level = *event.metadata().level();
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let line = match self.format {
            Format::Json => {
                let mut obj = serde_json::Map::new();
                obj.insert("timestamp".into(), now.into());
                obj.insert("level".into(), level.as_str().into());
                obj.insert("message".into(), f.message.replace('\n', " ").into());
                f.rest.remove("record");
                obj.extend(f.rest);
                serde_json::Value::Object(obj).to_string()
            }
            Format::Text => {
                // Structured records (`event` set) are for JSON logs: in text, the command
                // already printed them for humans.
                if f.rest.contains_key("record") {
                    return;
                }
                let prefix = match level {
                    Level::ERROR => "error: ",
                    Level::WARN => "WARNING: ",
                    _ => "",
                };
                let time = if self.timestamps {
                    format!("{now} ")
                } else {
                    String::new()
                };
                let msg = if level == Level::ERROR {
                    f.message.replace('\n', " ")
                } else {
                    f.message
                };
                format!("{time}{prefix}{msg}")
            }
        };
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
}
