//! Turning SDK errors into drkit errors: one line naming the bucket and the endpoint, the right
//! kind, never a secret.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use drkit_core::{one_line, Error};

/// What went wrong with one request, reduced to what the mapping needs (pure, testable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The server answered with an error: its code (may be empty) and HTTP status.
    Service {
        code: String,
        message: String,
        status: u16,
    },
    /// No answer: the connection failed, was reset, or timed out.
    Network { detail: String, timeout: bool },
    /// The SDK could not build or sign the request (missing credentials, bad region...).
    Client { detail: String, credentials: bool },
    /// The server's answer could not be read.
    BadResponse { detail: String },
}

impl Failure {
    /// Reduce an SDK error.
    pub(crate) fn of<E>(err: &SdkError<E, HttpResponse>) -> Failure
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match err {
            SdkError::ServiceError(ctx) => Failure::Service {
                code: ctx.err().code().unwrap_or_default().to_string(),
                message: ctx.err().message().unwrap_or_default().to_string(),
                status: ctx.raw().status().as_u16(),
            },
            SdkError::TimeoutError(_) => Failure::Network {
                detail: "the request timed out".into(),
                timeout: true,
            },
            SdkError::DispatchFailure(d) => {
                let detail = deepest(err);
                // Connection errors, resets and "closed before message completed" are all
                // network trouble; user errors (and a missing identity) are the config's.
                let credentials = mentions_credentials(err);
                if d.is_user() || credentials {
                    Failure::Client {
                        detail,
                        credentials,
                    }
                } else {
                    Failure::Network {
                        detail,
                        timeout: d.is_timeout(),
                    }
                }
            }
            SdkError::ResponseError(_) => Failure::BadResponse {
                detail: deepest(err),
            },
            _ => Failure::Client {
                detail: deepest(err),
                credentials: mentions_credentials(err),
            },
        }
    }
}

/// Whether some error of the chain is about loading credentials (the AWS chain found none).
fn mentions_credentials(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.to_string().to_ascii_lowercase().contains("credential") {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The innermost message of an error chain: the one that says what actually happened
/// ("Connection refused (os error 111)"), without the SDK's layers of wrapping.
fn deepest(err: &(dyn std::error::Error + 'static)) -> String {
    let mut last = err.to_string();
    let mut cur = err.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !text.is_empty() {
            last = text;
        }
        cur = c.source();
    }
    one_line(&last)
}

/// Error codes that mean "slow down" (retried by the SDK; reported as retryable).
fn is_throttling(code: &str) -> bool {
    matches!(
        code,
        "Throttling"
            | "ThrottlingException"
            | "SlowDown"
            | "RequestLimitExceeded"
            | "TooManyRequests"
            | "RequestThrottled"
    )
}

/// Turn a failure of operation `op` (e.g. `writing app/…/data.zst`) into a drkit error.
/// `place` names the bucket and the endpoint ("s3 bucket `b` at http://…").
pub(crate) fn to_error(place: &str, op: &str, f: Failure) -> Error {
    match f {
        Failure::Service { code, message, status } => {
            let reason = if message.is_empty() || message == "Unknown" {
                code.clone()
            } else {
                format!("{code}: {}", one_line(&message))
            };
            match code.as_str() {
                "NoSuchBucket" => Error::config(format!(
                    "{place}: the bucket does not exist (NoSuchBucket): create it, or fix `bucket`, `endpoint` and `region`"
                )),
                "InvalidAccessKeyId" => Error::config(format!(
                    "{place}: the server does not know the access key id (InvalidAccessKeyId): fix `access_key_id` or the AWS credentials drkit uses"
                )),
                "SignatureDoesNotMatch" => Error::config(format!(
                    "{place}: the secret access key is wrong (SignatureDoesNotMatch): fix `secret_access_key` or the AWS credentials drkit uses"
                )),
                "InvalidToken" | "ExpiredToken" | "TokenRefreshRequired" => Error::config(format!(
                    "{place}: the session token is invalid or expired ({code}): renew the credentials"
                )),
                "AuthorizationHeaderMalformed" | "PermanentRedirect" | "IllegalLocationConstraintException" => Error::config(format!(
                    "{place}: {op}: the bucket is in another region ({code}): set `region` to the bucket's region"
                )),
                "NoSuchKey" | "NotFound" | "NoSuchUpload" => {
                    Error::not_found(format!("{place}: {op}: not found ({reason})"))
                }
                "AccessDenied" | "Forbidden" | "AllAccessDisabled" => Error::storage(format!(
                    "{place}: {op}: access denied ({reason}): give drkit's credentials the permissions listed in docs/s3.md"
                )),
                _ if status == 404 => Error::not_found(format!("{place}: {op}: not found ({reason})")),
                _ if status == 403 => Error::storage(format!(
                    "{place}: {op}: access denied (HTTP 403{}): give drkit's credentials the permissions listed in docs/s3.md",
                    if code.is_empty() { String::new() } else { format!(", {code}") }
                )),
                _ if is_throttling(&code) || status == 429 || status >= 500 => Error::storage(format!(
                    "{place}: {op}: the server kept failing after retries (HTTP {status}{}): try again later",
                    if reason.is_empty() { String::new() } else { format!(", {reason}") }
                ))
                .retryable(),
                _ => Error::storage(format!(
                    "{place}: {op}: the server refused the request (HTTP {status}{})",
                    if reason.is_empty() { String::new() } else { format!(", {reason}") }
                )),
            }
        }
        Failure::Network { detail, timeout } => {
            let what = if timeout { "timed out" } else { "connection failed" };
            Error::storage(format!(
                "{place}: {op}: {what} after retries ({detail}): check `endpoint`, the network, and that the server is up"
            ))
            .retryable()
        }
        Failure::Client {
            detail,
            credentials,
        } => {
            if credentials {
                Error::config(format!(
                    "{place}: no usable AWS credentials ({detail}): set access_key_id and secret_access_key, or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, or an instance role"
                ))
            } else {
                Error::storage(format!("{place}: {op}: {detail}"))
            }
        }
        Failure::BadResponse { detail } => Error::storage(format!(
            "{place}: {op}: the server's answer could not be read ({detail}): is `endpoint` an S3 server?"
        ))
        .retryable(),
    }
}

/// Shorthand: map an SDK error of operation `op`.
pub(crate) fn sdk_error<E>(place: &str, op: &str, err: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    to_error(place, op, Failure::of(&err))
}

/// Whether an error is the server saying it does not implement an operation (s3s-fs lacks
/// ListMultipartUploads and object lock).
pub(crate) fn is_not_implemented(f: &Failure) -> bool {
    matches!(f, Failure::Service { code, status, .. } if code == "NotImplemented" || *status == 501)
}

#[cfg(test)]
mod tests {
    use super::*;
    use drkit_core::ErrorKind;

    fn service(code: &str, status: u16) -> Failure {
        Failure::Service {
            code: code.into(),
            message: "Some message".into(),
            status,
        }
    }

    #[test]
    fn mapping_table() {
        let place = "s3 bucket `b` at http://h:1";
        let cases: Vec<(Failure, ErrorKind, bool, &str)> = vec![
            (
                service("NoSuchBucket", 404),
                ErrorKind::Config,
                false,
                "bucket does not exist",
            ),
            (
                service("InvalidAccessKeyId", 403),
                ErrorKind::Config,
                false,
                "access key id",
            ),
            (
                service("SignatureDoesNotMatch", 403),
                ErrorKind::Config,
                false,
                "secret access key is wrong",
            ),
            (
                service("AccessDenied", 403),
                ErrorKind::Storage,
                false,
                "access denied",
            ),
            (service("", 403), ErrorKind::Storage, false, "HTTP 403"),
            (
                service("NoSuchKey", 404),
                ErrorKind::NotFound,
                false,
                "not found",
            ),
            (service("", 404), ErrorKind::NotFound, false, "not found"),
            (
                service("SlowDown", 503),
                ErrorKind::Storage,
                true,
                "HTTP 503",
            ),
            (
                service("InternalError", 500),
                ErrorKind::Storage,
                true,
                "after retries",
            ),
            (
                service("InvalidArgument", 400),
                ErrorKind::Storage,
                false,
                "refused",
            ),
            (
                Failure::Network {
                    detail: "Connection refused (os error 111)".into(),
                    timeout: false,
                },
                ErrorKind::Storage,
                true,
                "Connection refused",
            ),
            (
                Failure::Network {
                    detail: "x".into(),
                    timeout: true,
                },
                ErrorKind::Storage,
                true,
                "timed out",
            ),
            (
                Failure::Client {
                    detail: "IMDS is disabled".into(),
                    credentials: true,
                },
                ErrorKind::Config,
                false,
                "no usable AWS credentials",
            ),
            (
                Failure::Client {
                    detail: "invalid endpoint".into(),
                    credentials: false,
                },
                ErrorKind::Storage,
                false,
                "invalid endpoint",
            ),
        ];
        for (failure, kind, retry, needle) in cases {
            let e = to_error(place, "writing k", failure.clone());
            assert_eq!(e.kind(), kind, "{failure:?}");
            assert_eq!(e.is_retryable(), retry, "{failure:?}");
            let text = e.to_string();
            assert!(text.contains(needle), "{failure:?}: {text}");
            assert!(text.contains(place), "{text}");
            assert!(!text.contains('\n'), "{text}");
        }
    }

    #[test]
    fn not_implemented_is_recognised() {
        assert!(is_not_implemented(&service("NotImplemented", 501)));
        assert!(is_not_implemented(&service("", 501)));
        assert!(!is_not_implemented(&service("AccessDenied", 403)));
    }
}
