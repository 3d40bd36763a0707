//! Connection: the job's `source` table ([`MongoConfig`]) and its checks, the password (from
//! `password_file` or the URL, %-decoded), the connected client ([`Conn`]) and how a driver
//! error becomes a one-line drkit error without the secret.

use std::path::PathBuf;
use std::time::Duration;

use bson::doc;
use mongodb::options::ClientOptions;
use mongodb::Client;
use serde::Deserialize;

use drkit_core::{redact_url, DriverSpec, Error, Result};

use super::select::{check_db_name, parse_pattern, RestoreTarget};
use super::MongoSource;

/// How long to look for a server before giving up, unless the URL says otherwise.
const DEFAULT_SERVER_SELECTION: Duration = Duration::from_secs(10);

/// The `source` table of a MongoDB job.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MongoConfig {
    /// `mongodb://` or `mongodb+srv://` connection string; may hold user and password.
    pub(super) url: String,
    /// A file holding the password of the URL's user (first line); overrides a password in the URL.
    #[serde(default)]
    pub(super) password_file: Option<PathBuf>,
    /// Databases to dump; default: every database but admin, local and config.
    #[serde(default)]
    pub(super) databases: Option<Vec<String>>,
    /// Only these namespaces (`db.collection`, or `db.*`).
    #[serde(default)]
    pub(super) include_collections: Vec<String>,
    /// Never these namespaces (`db.collection`, or `db.*`).
    #[serde(default)]
    pub(super) exclude_collections: Vec<String>,
    /// Read the whole dump at one point in time where the server can (default true).
    #[serde(default = "yes")]
    pub(super) snapshot: bool,
}

fn yes() -> bool {
    true
}

impl MongoConfig {
    /// Read and check a job's `source` table (`what` names it in errors). Nothing is contacted.
    pub(super) fn from_spec(spec: &DriverSpec, what: &str) -> Result<MongoConfig> {
        let cfg: MongoConfig = spec.parse(what)?;
        if !(cfg.url.starts_with("mongodb://") || cfg.url.starts_with("mongodb+srv://")) {
            return Err(Error::config(format!(
                "{what}: url must start with mongodb:// or mongodb+srv://, got {:?}",
                redact_url(&cfg.url)
            )));
        }
        if let Some(dbs) = &cfg.databases {
            if dbs.is_empty() {
                return Err(Error::config(format!("{what}: databases is empty: name at least one, or remove the key to dump every database")));
            }
            for d in dbs {
                check_db_name(d).map_err(|e| Error::config(format!("{what}: databases: {e}")))?;
            }
        }
        for (key, list) in [
            ("include_collections", &cfg.include_collections),
            ("exclude_collections", &cfg.exclude_collections),
        ] {
            for p in list {
                parse_pattern(p).map_err(|e| Error::config(format!("{what}: {key}: {e}")))?;
            }
        }
        Ok(cfg)
    }
}

impl MongoSource {
    /// The password of `password_file` (its first line), if set.
    pub(super) fn password(&self) -> Result<Option<String>> {
        let Some(path) = &self.cfg.password_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!(
                "{}: cannot read password_file {}: {e}",
                self.what,
                path.display()
            ))
        })?;
        let pw = text.lines().next().unwrap_or("").to_string();
        if pw.is_empty() {
            return Err(Error::config(format!(
                "{}: password_file {} is empty",
                self.what,
                path.display()
            )));
        }
        Ok(Some(pw))
    }

    /// Connect to `url` (the job's, or a restore's `--to`) and check the server answers.
    pub(super) async fn connect(&self, url: &str, password: Option<String>) -> Result<Conn> {
        let shown = redact_url(url);
        let in_url = url_password(url, &self.what)?;
        let secret = password.clone().or(in_url);
        let scrub = |text: String| match &secret {
            Some(s) if !s.is_empty() => text.replace(s.as_str(), "***"),
            _ => text,
        };
        let mut opts = ClientOptions::parse(url).await.map_err(|e| {
            Error::config(format!(
                "{}: cannot read MongoDB url {shown}: {}",
                self.what,
                scrub(e.to_string())
            ))
        })?;
        if let Some(pw) = password {
            match opts.credential.as_mut() {
                Some(c) if c.username.is_some() => c.password = Some(pw),
                _ => {
                    return Err(Error::config(format!(
                        "{}: password_file is set but the url {shown} names no user (mongodb://USER@host/...)",
                        self.what
                    )))
                }
            }
        }
        if opts.server_selection_timeout.is_none() {
            opts.server_selection_timeout = Some(DEFAULT_SERVER_SELECTION);
        }
        if opts.connect_timeout.is_none() {
            opts.connect_timeout = Some(DEFAULT_SERVER_SELECTION);
        }
        opts.app_name = Some(format!("drkit {}", drkit_core::VERSION));
        let client = Client::with_options(opts).map_err(|e| {
            Error::config(format!(
                "{}: MongoDB url {shown}: {}",
                self.what,
                scrub(e.to_string())
            ))
        })?;
        let conn = Conn {
            client,
            shown,
            secret,
        };
        conn.client
            .database("admin")
            .run_command(doc! {"ping": 1})
            .await
            .map_err(|e| conn.error(e, "cannot connect to MongoDB"))?;
        Ok(conn)
    }

    /// The connection a restore (or a drill's cleanup) uses: `--to`'s server, else the job's.
    pub(super) async fn restore_conn(&self, target: &RestoreTarget) -> Result<Conn> {
        match &target.url {
            Some(url) => self.connect(url, None).await,
            None => self.connect(&self.cfg.url, self.password()?).await,
        }
    }
}

/// A connected client and how to talk about it without its secret.
pub(super) struct Conn {
    pub(super) client: Client,
    /// The URL, password removed.
    pub(super) shown: String,
    secret: Option<String>,
}

impl Conn {
    /// Turn a driver error into a drkit error: one line, the secret removed, a hint for the
    /// usual causes.
    pub(super) fn error(&self, e: mongodb::error::Error, doing: &str) -> Error {
        let mut text = e.to_string();
        if let Some(s) = &self.secret {
            if !s.is_empty() {
                text = text.replace(s.as_str(), "***");
            }
        }
        let text = text.replace('\n', " ");
        match e.kind.as_ref() {
            mongodb::error::ErrorKind::ServerSelection { .. } | mongodb::error::ErrorKind::Io(_) => Error::source_error(format!(
                "{doing} at {}: the server cannot be reached ({text}); check that it runs and that host and port are right",
                self.shown
            ))
            .retryable(),
            mongodb::error::ErrorKind::Authentication { .. } => Error::source_error(format!(
                "{doing} at {}: authentication failed ({text}); check the user, the password (or password_file) and authSource",
                self.shown
            )),
            mongodb::error::ErrorKind::Command(c) if c.code == 18 => Error::source_error(format!(
                "{doing} at {}: authentication failed ({text}); check the user, the password (or password_file) and authSource",
                self.shown
            )),
            mongodb::error::ErrorKind::Command(c) if c.code == 13 => Error::source_error(format!(
                "{doing} at {}: not authorized ({text}); the user needs the backup role to dump and the restore role to restore",
                self.shown
            )),
            mongodb::error::ErrorKind::Command(c) if c.code == 239 => Error::source_error(format!(
                "{doing} at {}: the snapshot is too old ({text}); raise the server's minSnapshotHistoryWindowInSeconds or set snapshot = false",
                self.shown
            )),
            _ => Error::source_error(format!("{doing} at {}: {text}", self.shown)),
        }
    }
}

/// The password in `url`'s user part, %-decoded, so that it can be scrubbed from driver errors
/// (which may show either form). A bad %-escape, or a password that is not UTF-8 once decoded,
/// is a config error of `what` that names the field and never shows its value; the driver
/// refuses such a URL too.
fn url_password(url: &str, what: &str) -> Result<Option<String>> {
    let Some((_, rest)) = url.split_once("://") else {
        return Ok(None);
    };
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let Some(at) = authority.rfind('@') else {
        return Ok(None);
    };
    let Some((_, pw)) = authority[..at].split_once(':') else {
        return Ok(None);
    };
    percent_decode(pw).map(Some).map_err(|why| {
        Error::config(format!(
            "{what}: the MongoDB url {} {why} in its password",
            redact_url(url)
        ))
    })
}

/// Strict `%XX` decoding (with the `percent-encoding` crate): every `%` must start an escape of
/// two hex digits, and the bytes must be UTF-8. The error says which rule was broken.
fn percent_decode(s: &str) -> std::result::Result<String, &'static str> {
    let b = s.as_bytes();
    let hex = |i: usize| b.get(i).is_some_and(u8::is_ascii_hexdigit);
    if (0..b.len()).any(|i| b[i] == b'%' && !(hex(i + 1) && hex(i + 2))) {
        return Err("has a bad %-escape");
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| "is not UTF-8 once %-decoded")
}

#[cfg(test)]
mod tests {
    use super::*;
    use drkit_core::ErrorKind;

    #[test]
    fn url_password_is_found_for_scrubbing() {
        let pw = |url: &str| url_password(url, "job.x.source").unwrap();
        assert_eq!(pw("mongodb://u:p%40ss@h/db").as_deref(), Some("p@ss"));
        assert_eq!(pw("mongodb://u@h/db"), None);
        assert_eq!(pw("mongodb://h/db?x=a:b@c"), None);
    }

    #[test]
    fn url_password_is_percent_decoded() {
        let cases: &[(&str, &str)] = &[
            ("mongodb://u:plain@h/", "plain"),
            // A final escape is decoded (the old decoder left it as it was).
            ("mongodb://u:pass%40@h/", "pass@"),
            ("mongodb://u:%40@h/", "@"),
            ("mongodb://u:caf%C3%A9@h/", "café"),
            ("mongodb://u:%c3%a9t%C3%A9@h/db", "été"),
            ("mongodb://u:a%3Ab%2Fc@h1,h2/db?replicaSet=rs", "a:b/c"),
            ("mongodb+srv://u:%25@cluster/", "%"),
            ("mongodb://u:@h/", ""),
        ];
        for (url, want) in cases {
            assert_eq!(
                url_password(url, "job.x.source").unwrap().as_deref(),
                Some(*want),
                "{url}"
            );
        }
    }

    #[test]
    fn bad_url_password_is_a_config_error_without_the_password() {
        let cases: &[(&str, &str, &str)] = &[
            ("mongodb://u:secret%4@h/", "secret", "bad %-escape"),
            ("mongodb://u:secret%@h/", "secret", "bad %-escape"),
            ("mongodb://u:secret%zz@h/", "secret", "bad %-escape"),
            ("mongodb://u:s%C3%A9cr%@h/", "s%C3%A9cr", "bad %-escape"),
            // A '%' before a multi-byte character: no slicing inside it, a clean error.
            ("mongodb://u:secret%é1@h/", "secret", "bad %-escape"),
            ("mongodb://u:secret%FF@h/", "secret", "not UTF-8"),
            ("mongodb://u:secret%C3@h/", "secret", "not UTF-8"),
        ];
        for (url, secret, why) in cases {
            let e = url_password(url, "job.x.source").unwrap_err();
            let text = e.to_string();
            assert_eq!(e.kind(), ErrorKind::Config, "{url}");
            assert!(text.starts_with("job.x.source: "), "{text}");
            assert!(text.contains("password") && text.contains(why), "{text}");
            assert!(!text.contains(secret), "{text}");
            assert!(!text.contains('\n'), "{text}");
        }
    }

    #[test]
    fn config_is_checked() {
        let spec = |t: &str| DriverSpec {
            kind: "mongodb".into(),
            settings: toml::from_str(t).unwrap(),
        };
        assert!(MongoSource::from_spec(&spec("url = \"mongodb://h/\""), "job.x.source").is_ok());
        for bad in [
            "url = \"postgres://h/\"",
            "url = \"mongodb://h/\"\ndatabases = []",
            "url = \"mongodb://h/\"\ninclude_collections = [\"users\"]",
            "url = \"mongodb://h/\"\nbogus = 1",
            "url = \"mongodb://u:secret@h/\"\ndatabases = [\"a.b\"]",
        ] {
            let e = MongoSource::from_spec(&spec(bad), "job.x.source")
                .err()
                .unwrap();
            assert_eq!(e.kind(), ErrorKind::Config, "{bad}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
    }
}
