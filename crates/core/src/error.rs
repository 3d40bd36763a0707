//! One error type for the whole library: a [`ErrorKind`] that callers branch on, a message
//! written for the operator (what went wrong, and what to do), and an optional cause.

use std::fmt;

/// What kind of failure an [`Error`] is. [`crate::Exit`] maps each kind to an exit code; in
/// JSON (reports, `--json`) it is [`ErrorKind::as_str`]'s name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration or the command line is wrong (exit 2).
    Config,
    /// The system being backed up or restored failed (database, file, volume).
    Source,
    /// The storage failed (local folder, S3).
    Storage,
    /// A job, backup, object or file that was asked for does not exist.
    NotFound,
    /// A checksum, structure or count check failed (exit 4).
    Integrity,
    /// An external program (pg_dump, docker, ...) failed.
    ExternalCommand,
    /// A safety guard refused to go on (exit 3).
    Refused,
    /// The operation was interrupted.
    Cancelled,
}

impl ErrorKind {
    /// A short lowercase name, used in `--json` output.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Source => "source",
            ErrorKind::Storage => "storage",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Integrity => "integrity",
            ErrorKind::ExternalCommand => "external_command",
            ErrorKind::Refused => "refused",
            ErrorKind::Cancelled => "cancelled",
        }
    }
}

/// Text on one line: every run of whitespace (newlines included) becomes one space. The one
/// place drkit flattens a message (a server's multi-line error, a tool's stderr) for the
/// one-line rule.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The library's error: a kind, an operator-facing message, and an optional cause.
///
/// The message never contains a secret: drivers remove credentials before building one
/// (see [`crate::redact_url`]).
pub struct Error {
    kind: ErrorKind,
    message: String,
    retryable: bool,
    cause: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// `Result` with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with an operator-facing `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            retryable: false,
            cause: None,
        }
    }

    /// A [`ErrorKind::Config`] error.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }
    /// A [`ErrorKind::Source`] error.
    pub fn source_error(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Source, message)
    }
    /// A [`ErrorKind::Storage`] error.
    pub fn storage(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Storage, message)
    }
    /// A [`ErrorKind::NotFound`] error.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    /// A [`ErrorKind::Integrity`] error.
    pub fn integrity(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Integrity, message)
    }
    /// A [`ErrorKind::ExternalCommand`] error.
    pub fn external(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ExternalCommand, message)
    }
    /// A [`ErrorKind::Refused`] error.
    pub fn refused(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Refused, message)
    }
    /// A [`ErrorKind::Cancelled`] error.
    pub fn cancelled(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Cancelled, message)
    }

    /// Attach the underlying cause; its text is appended to the message when displayed.
    pub fn with_cause(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.cause = Some(Box::new(cause));
        self
    }

    /// Mark the error as worth retrying (throttling, timeouts, dropped connections).
    pub fn retryable(mut self) -> Self {
        self.retryable = true;
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The operator-facing message, without the cause.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether retrying the same operation may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// Prefix the message with context, e.g. the job or the key it concerns.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        let mut cause: Option<&(dyn std::error::Error + 'static)> = match &self.cause {
            Some(c) => Some(c.as_ref()),
            None => None,
        };
        while let Some(c) = cause {
            let text = c.to_string();
            if !text.is_empty() && !self.message.contains(&text) {
                write!(f, ": {text}")?;
            }
            cause = c.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({:?}: {})", self.kind, self)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            Some(c) => Some(c.as_ref()),
            None => None,
        }
    }
}

/// Errors that cross an `std::io` boundary (an `AsyncRead` in the pipeline) keep their kind:
/// a driver can return `io::Error::other(drkit_error)` and the pipeline gets it back.
impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        std::io::Error::other(e)
    }
}

/// Turn an I/O error that came out of the pipeline back into the library error it carried,
/// or wrap it as `kind` with `context`.
pub fn from_io(e: std::io::Error, kind: ErrorKind, context: impl fmt::Display) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        let inner = e.into_inner().expect("checked above");
        return *inner.downcast::<Error>().expect("checked above");
    }
    let retry = matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    );
    let err = Error::new(kind, context.to_string()).with_cause(e);
    if retry {
        err.retryable()
    } else {
        err
    }
}

/// Remove the password (and any query secrets) from a URL so it can be shown or stored.
///
/// ```
/// assert_eq!(
///     drkit_core::redact_url("postgres://app:s3cret@db:5432/app"),
///     "postgres://app:***@db:5432/app"
/// );
/// assert_eq!(drkit_core::redact_url("/var/lib/x.db"), "/var/lib/x.db");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..scheme_end + 3]);
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let tail = &rest[authority_end..];
    // Query parameters that carry secrets (password=, sslpassword=, secret...) are masked.
    match tail.find('?') {
        Some(q) => {
            out.push_str(&tail[..=q]);
            let params: Vec<String> = tail[q + 1..]
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if is_secret_key(k) => format!("{k}=***"),
                    _ => p.to_string(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
        None => out.push_str(tail),
    }
    out
}

fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password") || k.contains("secret") || k.contains("token")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_urls() {
        let cases = [
            ("postgres://u:p@h/db", "postgres://u:***@h/db"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            (
                "mongodb://u:p%40x@h1,h2/?authSource=admin",
                "mongodb://u:***@h1,h2/?authSource=admin",
            ),
            (
                "postgres://h/db?password=x&sslmode=require",
                "postgres://h/db?password=***&sslmode=require",
            ),
            ("plain", "plain"),
        ];
        for (input, want) in cases {
            assert_eq!(redact_url(input), want, "{input}");
        }
    }

    #[test]
    fn io_roundtrip_keeps_kind() {
        let io: std::io::Error = Error::integrity("bad").into();
        let back = from_io(io, ErrorKind::Storage, "ctx");
        assert_eq!(back.kind(), ErrorKind::Integrity);
        assert_eq!(back.to_string(), "bad");
    }

    #[test]
    fn display_appends_cause_once() {
        let e = Error::storage("writing x").with_cause(std::io::Error::other("disk full"));
        assert_eq!(e.to_string(), "writing x: disk full");
    }
}
