//! Human and JSON output: tables and messages on a terminal, one JSON document with --json.

use std::io::IsTerminal;
use std::sync::Arc;

use drkit_core::pipeline::Progress;
use drkit_core::Error;
use indicatif::{ProgressBar, ProgressStyle};

/// Where and how much to print.
#[derive(Clone, Copy)]
pub struct Output {
    pub json: bool,
    pub quiet: bool,
}

impl Output {
    pub fn new(json: bool, quiet: bool) -> Self {
        Output { json, quiet }
    }

    /// A progress message on stderr (not with -q).
    pub fn info(&self, msg: impl AsRef<str>) {
        tracing::info!("{}", msg.as_ref());
    }

    /// A warning on stderr (not with -q).
    pub fn warn(&self, msg: impl AsRef<str>) {
        tracing::warn!("{}", msg.as_ref());
    }

    /// One error line on stderr (always) for a failure the command reports and goes on from
    /// (one storage of several, one job of several); the exit code says it at the end.
    pub fn error(&self, msg: impl AsRef<str>) {
        tracing::error!("{}", msg.as_ref());
    }

    /// Detail shown with -v.
    pub fn detail(&self, msg: impl AsRef<str>) {
        tracing::debug!("{}", msg.as_ref());
    }

    /// A structured record for `--log-format json` (in text, the command prints its own
    /// lines for humans and this prints nothing).
    pub fn record(&self, r: Record<'_>) {
        let job = r.job.unwrap_or_default();
        let storage = r.storage.unwrap_or_default();
        let backup_id = r.backup_id.unwrap_or_default();
        let duration_s = r.duration.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN);
        if r.ok {
            tracing::info!(
                record = true,
                event = r.event,
                job,
                storage,
                backup_id,
                duration_s,
                "{}",
                r.message
            );
        } else {
            tracing::error!(
                record = true,
                event = r.event,
                job,
                storage,
                backup_id,
                duration_s,
                "{}",
                r.message
            );
        }
    }

    /// Human text on stdout (not with --json).
    pub fn text(&self, msg: impl AsRef<str>) {
        if !self.json {
            stdout_line(msg.as_ref());
        }
    }

    /// The one JSON document of --json.
    pub fn json_doc(&self, value: &serde_json::Value) {
        if self.json {
            stdout_line(&serde_json::to_string_pretty(value).expect("JSON value serializes"));
        }
    }

    /// A byte-progress bar on stderr when it is a terminal; a no-op otherwise. Once told the
    /// total (a manifest's raw size), it shows the share done, the rate and the time left.
    pub fn progress(&self, label: &str) -> (Progress, Option<ProgressBar>) {
        if self.quiet || self.json || !std::io::stderr().is_terminal() {
            return (drkit_core::pipeline::no_progress(), None);
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} {bytes} ({bytes_per_sec}) {elapsed}")
                .expect("valid template"),
        );
        bar.set_message(label.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        (Arc::new(Bar(bar.clone())), Some(bar))
    }
}

/// One structured log record: what happened (`backup.done`, `drill.failed`, ...), about what.
#[derive(Debug, Default)]
pub struct Record<'a> {
    /// The event's name.
    pub event: &'a str,
    /// The job.
    pub job: Option<&'a str>,
    /// The storage.
    pub storage: Option<&'a str>,
    /// The backup.
    pub backup_id: Option<&'a str>,
    /// How long it took.
    pub duration: Option<std::time::Duration>,
    /// Whether it went well (INFO) or not (ERROR).
    pub ok: bool,
    /// One line.
    pub message: String,
}

/// A progress bar as the library's [`drkit_core::pipeline::Meter`].
struct Bar(ProgressBar);

impl drkit_core::pipeline::Meter for Bar {
    fn moved(&self, bytes: u64) {
        self.0.set_position(bytes);
    }

    fn total(&self, bytes: u64) {
        self.0.set_length(bytes);
        self.0.set_position(0);
        self.0.reset_eta();
        self.0.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta})",
            )
            .expect("valid template"),
        );
    }
}

/// One line on stdout. A closed pipe (`drkit --json list | head -c1`) ends the output
/// quietly, as with any Unix tool: no panic, no message.
fn stderr_line(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn stdout_line(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Print an error as one line on stderr (and as JSON on stdout with --json).
pub fn print_error(e: &Error, json: bool) {
    let line = e.to_string().replace('\n', " ");
    tracing::error!(kind = e.kind().as_str(), "{line}");
    if json {
        let doc = serde_json::json!({"error": {"kind": e.kind().as_str(), "message": line}});
        stdout_line(&serde_json::to_string_pretty(&doc).expect("JSON value serializes"));
    }
}

pub use drkit_core::units::human_bytes;

/// A duration in seconds as a short human string (3h 5m, 2d 4h, 45s): the library's formatter.
pub fn human_age(secs: i64) -> String {
    drkit_core::ops::health::human_age(std::time::Duration::from_secs(secs.max(0) as u64))
}

/// Render rows as a left-aligned table with a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(header.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n")
}

impl Output {
    /// A refusal on stderr, always (even with -q and --json): its lines, as they are.
    pub fn refusal(&self, lines: &[String]) {
        for line in lines {
            stderr_line(line);
        }
    }

    /// A script on stdout exactly as it is, whatever the flags (`guard --install`, for eval).
    pub fn script(&self, text: &str) {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        let cases = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (5 * 1024 * 1024 + 1, "5.0 MiB"),
        ];
        for (n, want) in cases {
            assert_eq!(human_bytes(n), want);
        }
        let ages = [
            (5, "5s"),
            (600, "10m"),
            (3 * 3600 + 300, "3h 5m"),
            (2 * 86_400 + 3600, "2d 1h"),
        ];
        for (s, want) in ages {
            assert_eq!(human_age(s), want);
        }
    }

    #[test]
    fn table_aligns() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y");
    }
}
