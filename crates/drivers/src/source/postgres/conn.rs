//! Connection settings: the job's URL read the way libpq reads it, the password found where
//! libpq would find it, a `tokio-postgres` config for drkit's own connection, and a libpq
//! connection string (without the password) for the child programs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drkit_core::{redact_url, Error, ErrorKind, Result};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

/// The parameters of a connection, libpq keywords to values (`host`, `port`, `user`,
/// `dbname`, `password`, `sslmode`, ...). `host` and `port` may hold comma-separated lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnParams {
    params: BTreeMap<String, String>,
}

/// Where a password came from (never the password itself), for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordSource {
    /// In the URL.
    Url,
    /// The job's `password_file`.
    File,
    /// The `PGPASSWORD` environment variable.
    Env,
    /// A matching line of `~/.pgpass` (or `$PGPASSFILE`).
    PgPass,
}

/// Strict `%XX` decoding of the URL part `what` (with the `percent-encoding` crate): every `%`
/// must start an escape of two hex digits, and the bytes must be UTF-8. Errors name the part,
/// never its value.
fn percent_decode(s: &str, what: &str) -> Result<String> {
    let b = s.as_bytes();
    let hex = |i: usize| b.get(i).is_some_and(u8::is_ascii_hexdigit);
    if (0..b.len()).any(|i| b[i] == b'%' && !(hex(i + 1) && hex(i + 2))) {
        return Err(Error::config(format!(
            "the postgres url has a bad %-escape in its {what}"
        )));
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| {
            Error::config(format!(
                "the postgres url's {what} is not UTF-8 once %-decoded"
            ))
        })
}

/// Percent-encode a value for a URL path or user part.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl ConnParams {
    /// Read a `postgres://` or `postgresql://` URL, libpq style:
    /// `postgres://[user[:password]@][host[:port][,host[:port]...]][/dbname][?key=value&...]`.
    /// Missing host, port, user and database are filled in from `PGHOST`, `PGPORT`,
    /// `PGUSER`, `PGDATABASE` (through `env`), else `localhost`, 5432, `$USER`, the user.
    pub fn parse_url(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<ConnParams> {
        let bad = |why: &str| {
            Error::config(format!(
                "cannot read the postgres url {:?}: {why}",
                redact_url(url)
            ))
        };
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| bad("it must start with postgres:// or postgresql://"))?;
        let (before_query, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match before_query.find('/') {
            Some(i) => (&before_query[..i], Some(&before_query[i + 1..])),
            None => (before_query, None),
        };
        let mut params = BTreeMap::new();
        let hosts_part = match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                let (user, password) = match userinfo.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (userinfo, None),
                };
                if !user.is_empty() {
                    params.insert("user".to_string(), percent_decode(user, "user")?);
                }
                if let Some(p) = password {
                    params.insert("password".to_string(), percent_decode(p, "password")?);
                }
                &authority[at + 1..]
            }
            None => authority,
        };
        if !hosts_part.is_empty() {
            let mut hosts = Vec::new();
            let mut ports = Vec::new();
            for hp in hosts_part.split(',') {
                let (host, port) = if let Some(inner) = hp.strip_prefix('[') {
                    let close = inner
                        .find(']')
                        .ok_or_else(|| bad("unclosed [ in an IPv6 host"))?;
                    let port = inner[close + 1..].strip_prefix(':');
                    (&inner[..close], port)
                } else {
                    match hp.rsplit_once(':') {
                        Some((h, p)) => (h, Some(p)),
                        None => (hp, None),
                    }
                };
                hosts.push(percent_decode(host, "host")?);
                if let Some(p) = port.filter(|p| !p.is_empty()) {
                    p.parse::<u16>()
                        .map_err(|_| bad(&format!("port {p:?} is not a number")))?;
                    ports.push(p.to_string());
                } else {
                    ports.push(String::new());
                }
            }
            if hosts.iter().any(|h| !h.is_empty()) {
                params.insert("host".to_string(), hosts.join(","));
            }
            if ports.iter().any(|p| !p.is_empty()) {
                params.insert("port".to_string(), ports.join(","));
            }
        }
        if let Some(db) = path.filter(|p| !p.is_empty()) {
            params.insert("dbname".to_string(), percent_decode(db, "database name")?);
        }
        if let Some(q) = query {
            for pair in q.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').ok_or_else(|| {
                    bad(&format!(
                        "query parameter {:?} has no value",
                        pair.split('=').next().unwrap_or("")
                    ))
                })?;
                params.insert(percent_decode(k, "query")?, percent_decode(v, "query")?);
            }
        }
        let mut p = ConnParams { params };
        p.fill_defaults(env);
        Ok(p)
    }

    fn fill_defaults(&mut self, env: &dyn Fn(&str) -> Option<String>) {
        let nonempty = |k: &str| env(k).filter(|v| !v.is_empty());
        if !self.params.contains_key("host") {
            self.params.insert(
                "host".into(),
                nonempty("PGHOST").unwrap_or_else(|| "localhost".into()),
            );
        }
        if !self.params.contains_key("port") {
            self.params.insert(
                "port".into(),
                nonempty("PGPORT").unwrap_or_else(|| "5432".into()),
            );
        }
        if !self.params.contains_key("user") {
            let user = nonempty("PGUSER")
                .or_else(|| nonempty("USER"))
                .unwrap_or_else(|| "postgres".into());
            self.params.insert("user".into(), user);
        }
        if !self.params.contains_key("dbname") {
            let db = nonempty("PGDATABASE").unwrap_or_else(|| self.user().to_string());
            self.params.insert("dbname".into(), db);
        }
    }

    /// One parameter.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    /// The user name.
    pub fn user(&self) -> &str {
        self.get("user").unwrap_or("")
    }

    /// The database name.
    pub fn dbname(&self) -> &str {
        self.get("dbname").unwrap_or("")
    }

    /// The first host (a name, an address, or a socket folder).
    pub fn first_host(&self) -> &str {
        self.get("host")
            .and_then(|h| h.split(',').next())
            .unwrap_or("localhost")
    }

    /// The first port.
    pub fn first_port(&self) -> &str {
        self.get("port")
            .and_then(|p| p.split(',').next())
            .filter(|p| !p.is_empty())
            .unwrap_or("5432")
    }

    /// The password given in the URL.
    pub fn url_password(&self) -> Option<&str> {
        self.get("password")
    }

    /// The same server, another database.
    pub fn with_dbname(&self, db: &str) -> ConnParams {
        let mut p = self.clone();
        p.params.insert("dbname".into(), db.to_string());
        p
    }

    /// The same connection with the host and port replaced (for a tool run elsewhere).
    pub fn with_host_port(&self, host: Option<&str>, port: Option<u16>) -> ConnParams {
        let mut p = self.clone();
        if let Some(h) = host {
            p.params.insert("host".into(), h.to_string());
        }
        if let Some(port) = port {
            p.params.insert("port".into(), port.to_string());
        }
        p
    }

    /// `host:port/dbname` for messages (no user, no password).
    pub fn server(&self) -> String {
        let host = self.first_host();
        if host.contains(':') && !host.starts_with('/') {
            format!("[{host}]:{}", self.first_port())
        } else {
            format!("{host}:{}", self.first_port())
        }
    }

    /// `postgres://user@host:port/dbname` without the password, for messages and manifests.
    pub fn display(&self) -> String {
        format!(
            "postgres://{}@{}/{}",
            percent_encode(self.user()),
            self.server(),
            percent_encode(self.dbname())
        )
    }

    /// A libpq connection string (`key='value' ...`) with every parameter but the password,
    /// for `--dbname=` of the child programs (the password goes by `PGPASSWORD`).
    pub fn conninfo(&self) -> String {
        self.params
            .iter()
            .filter(|(k, _)| k.as_str() != "password")
            .map(|(k, v)| format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The config of drkit's own connection (stats, snapshot, checks).
    pub fn tokio_config(&self, password: Option<&str>) -> Result<tokio_postgres::Config> {
        let mut c = tokio_postgres::Config::new();
        let hosts: Vec<&str> = self.get("host").unwrap_or("localhost").split(',').collect();
        for h in &hosts {
            c.host(if h.is_empty() { "localhost" } else { h });
        }
        let ports: Vec<&str> = self.get("port").unwrap_or("5432").split(',').collect();
        for p in &ports {
            let port = if p.is_empty() {
                5432
            } else {
                p.parse()
                    .map_err(|_| Error::config(format!("postgres port {p:?} is not a number")))?
            };
            c.port(port);
        }
        c.user(self.user())
            .dbname(self.dbname())
            .application_name("drkit");
        if let Some(pw) = password {
            c.password(pw);
        }
        let timeout = match self.get("connect_timeout") {
            Some(t) => t.parse::<u64>().map_err(|_| {
                Error::config(format!(
                    "postgres connect_timeout {t:?} is not a number of seconds"
                ))
            })?,
            None => 15,
        };
        c.connect_timeout(Duration::from_secs(timeout.max(1)));
        if let Some(o) = self.get("options") {
            c.options(o);
        }
        match self.get("sslmode").unwrap_or("prefer") {
            "disable" | "allow" | "prefer" => {
                c.ssl_mode(tokio_postgres::config::SslMode::Disable);
            }
            other => {
                return Err(Error::config(format!(
                    "sslmode={other} is not supported yet: drkit's own PostgreSQL connection has no TLS; use sslmode=prefer or disable, or reach the server over a trusted network or socket"
                )))
            }
        }
        Ok(c)
    }
}

/// Unescape one field of a `.pgpass` line (`\:` and `\\`).
fn pgpass_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' => {
                if let Some(next) = chars.next() {
                    cur.push(next);
                }
            }
            ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
            _ => cur.push(ch),
        }
    }
    fields.push(cur);
    fields
}

/// Look up a password in `.pgpass` text: `host:port:database:user:password` lines, `*`
/// matches anything, the first matching line wins. A socket folder matches `localhost`.
pub fn pgpass_lookup(text: &str, host: &str, port: &str, db: &str, user: &str) -> Option<String> {
    let host = if host.starts_with('/') || host.is_empty() {
        "localhost"
    } else {
        host
    };
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let f = pgpass_fields(line);
        if f.len() != 5 {
            continue;
        }
        let ok = |pat: &str, val: &str| pat == "*" || pat == val;
        if ok(&f[0], host) && ok(&f[1], port) && ok(&f[2], db) && ok(&f[3], user) {
            return Some(f[4].clone());
        }
    }
    None
}

/// Find the password of `params`, in this order: the URL, `password_file`, `PGPASSWORD`,
/// then `$PGPASSFILE` or `~/.pgpass` (ignored, as libpq does, when others may read it).
pub fn resolve_password(
    params: &ConnParams,
    password_file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(String, PasswordSource)>> {
    if let Some(p) = params.url_password() {
        return Ok(Some((p.to_string(), PasswordSource::Url)));
    }
    if let Some(file) = password_file {
        let text = std::fs::read_to_string(file).map_err(|e| {
            Error::config(format!("cannot read password_file {}: {e}", file.display()))
        })?;
        let pw = text.strip_suffix('\n').unwrap_or(&text);
        let pw = pw.strip_suffix('\r').unwrap_or(pw);
        if pw.is_empty() {
            return Err(Error::config(format!(
                "password_file {} is empty",
                file.display()
            )));
        }
        return Ok(Some((pw.to_string(), PasswordSource::File)));
    }
    if let Some(p) = env("PGPASSWORD").filter(|p| !p.is_empty()) {
        return Ok(Some((p, PasswordSource::Env)));
    }
    let passfile = env("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".pgpass")));
    if let Some(path) = passfile {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(&path) {
            if meta.is_file() && meta.permissions().mode() & 0o077 == 0 {
                if let Ok(text) = std::fs::read_to_string(&path) {
                    let found = pgpass_lookup(
                        &text,
                        params.first_host(),
                        params.first_port(),
                        params.dbname(),
                        params.user(),
                    );
                    if let Some(p) = found {
                        return Ok(Some((p, PasswordSource::PgPass)));
                    }
                }
            }
        }
    }
    Ok(None)
}

pub(crate) use drkit_core::one_line;

/// The text of an error and its causes, on one line.
fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = c.source();
    }
    one_line(&parts.join(": "))
}

fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = c.source();
    }
    None
}

/// Turn an error of drkit's connection to `params` into one clear line of the right kind.
pub fn pg_error(e: &tokio_postgres::Error, params: &ConnParams, doing: &str) -> Error {
    let server = params.server();
    if let Some(db) = e.as_db_error() {
        let msg = one_line(db.message());
        let code = db.code();
        if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            return Error::config(format!(
                "PostgreSQL at {server} refused user {:?}: {msg}: check the password (url, password_file, PGPASSWORD or ~/.pgpass) and pg_hba.conf",
                params.user()
            ));
        }
        if *code == SqlState::INVALID_CATALOG_NAME {
            return Error::config(format!(
                "database {:?} does not exist on {server}: check the database in the url (or `databases`)",
                params.dbname()
            ));
        }
        if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            return Error::source_error(format!(
                "{doing} on {server}/{}: {msg}: user {:?} needs read access to everything it backs up",
                params.dbname(),
                params.user()
            ));
        }
        let err = Error::source_error(format!("{doing} on {server}/{}: {msg}", params.dbname()));
        return if code.code().starts_with("08") || code.code().starts_with("57P") {
            err.retryable()
        } else {
            err
        };
    }
    let text = chain_text(e);
    if text.contains("password missing") {
        return Error::config(format!(
            "PostgreSQL at {server} asks for a password for user {:?} and none was found: put it in the url, password_file, PGPASSWORD or ~/.pgpass",
            params.user()
        ));
    }
    match io_kind(e) {
        Some(std::io::ErrorKind::ConnectionRefused) => Error::source_error(format!(
            "cannot connect to PostgreSQL at {server}: connection refused: is the server running, and are the url's host and port right?"
        ))
        .retryable(),
        Some(std::io::ErrorKind::TimedOut) => Error::source_error(format!(
            "cannot connect to PostgreSQL at {server}: timed out: check the host, port and firewall"
        ))
        .retryable(),
        _ if text.contains("timeout") || text.contains("timed out") => Error::source_error(format!(
            "cannot connect to PostgreSQL at {server}: timed out: check the host, port and firewall"
        ))
        .retryable(),
        _ if text.contains("lookup address") || text.contains("resolve") => Error::source_error(format!(
            "cannot connect to PostgreSQL at {server}: the host name does not resolve: {text}"
        )),
        _ => Error::new(ErrorKind::Source, format!("{doing} on {server}/{}: {text}", params.dbname())).retryable(),
    }
}

/// Open drkit's own connection to `params` (the connection is driven by a spawned task,
/// which ends when the returned client is dropped).
pub async fn connect(params: &ConnParams, password: Option<&str>) -> Result<Client> {
    let config = params.tokio_config(password)?;
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| pg_error(&e, params, "connecting"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Whether a connect error means the database does not exist.
pub fn is_missing_database(e: &Error) -> bool {
    e.kind() == ErrorKind::Config
        && e.message().starts_with("database ")
        && e.message().contains(" does not exist on ")
}

/// Quote an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quote an SQL string literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn parses_urls() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            (
                "postgres://app:s%40cret@db.example:6543/app_prod?sslmode=disable",
                &[
                    ("user", "app"),
                    ("password", "s@cret"),
                    ("host", "db.example"),
                    ("port", "6543"),
                    ("dbname", "app_prod"),
                    ("sslmode", "disable"),
                ],
            ),
            (
                "postgresql://u@h/d",
                &[
                    ("user", "u"),
                    ("host", "h"),
                    ("port", "5432"),
                    ("dbname", "d"),
                ],
            ),
            (
                "postgres://u@[::1]:5433/d",
                &[("host", "::1"), ("port", "5433")],
            ),
            (
                "postgres://u@h1:1,h2:2/d",
                &[("host", "h1,h2"), ("port", "1,2")],
            ),
            (
                "postgres:///d?host=/var/run/postgresql&user=x",
                &[
                    ("host", "/var/run/postgresql"),
                    ("user", "x"),
                    ("dbname", "d"),
                ],
            ),
            ("postgres://u@%2Ftmp%2Fsock/d", &[("host", "/tmp/sock")]),
            ("postgres://u@h", &[("dbname", "u")]),
            ("postgres://u@h/my%20db", &[("dbname", "my db")]),
        ];
        for (url, want) in cases {
            let p = ConnParams::parse_url(url, &no_env).unwrap();
            for (k, v) in *want {
                assert_eq!(p.get(k), Some(*v), "{url} {k}");
            }
        }
    }

    #[test]
    fn url_errors_hide_the_password() {
        for url in [
            "mysql://u:pw@h/d",
            "postgres://u:pw@h:notaport/d",
            "postgres://u:pw@h/d%zz",
        ] {
            let e = ConnParams::parse_url(url, &no_env).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config);
            assert!(!e.to_string().contains("pw@"), "{e}");
        }
    }

    #[test]
    fn url_parts_are_percent_decoded() {
        let cases: &[(&str, &str, &str)] = &[
            // A final escape is decoded.
            ("postgres://u:pass%40@h/d", "password", "pass@"),
            ("postgres://u:%40@h/d", "password", "@"),
            ("postgres://u:caf%C3%A9@h/d", "password", "café"),
            ("postgres://u:%c3%a9t%C3%A9@h/d", "password", "été"),
            ("postgres://u:%25@h/d", "password", "%"),
            ("postgres://us%65r@h/d", "user", "user"),
            ("postgres://u@h/caf%C3%A9", "dbname", "café"),
            (
                "postgres://u@h/d?application_name=a%20b",
                "application_name",
                "a b",
            ),
        ];
        for (url, key, want) in cases {
            let p = ConnParams::parse_url(url, &no_env).unwrap();
            assert_eq!(p.get(key), Some(*want), "{url}");
        }
    }

    #[test]
    fn bad_percent_escapes_are_config_errors_without_the_value() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "postgres://u:secret%4@h/d",
                "bad %-escape in its password",
                "secret",
            ),
            (
                "postgres://u:secret%@h/d",
                "bad %-escape in its password",
                "secret",
            ),
            (
                "postgres://u:secret%zz@h/d",
                "bad %-escape in its password",
                "secret",
            ),
            // A '%' before a multi-byte character: a clean error, no slicing inside it.
            (
                "postgres://u:secret%é1@h/d",
                "bad %-escape in its password",
                "secret",
            ),
            (
                "postgres://u:secret%FF@h/d",
                "password is not UTF-8",
                "secret",
            ),
            (
                "postgres://u:secret%C3@h/d",
                "password is not UTF-8",
                "secret",
            ),
            (
                "postgres://us%zzer:secret@h/d",
                "bad %-escape in its user",
                "secret",
            ),
            (
                "postgres://u:secret@h/d%FF",
                "database name is not UTF-8",
                "secret",
            ),
        ];
        for (url, why, secret) in cases {
            let e = ConnParams::parse_url(url, &no_env).unwrap_err();
            let text = e.to_string();
            assert_eq!(e.kind(), ErrorKind::Config, "{url}");
            assert!(text.contains(why), "{url}: {text}");
            assert!(!text.contains(secret), "{text}");
            assert!(!text.contains('\n'), "{text}");
        }
    }

    #[test]
    fn defaults_come_from_env() {
        let env = |k: &str| match k {
            "PGHOST" => Some("dbhost".to_string()),
            "PGUSER" => Some("alice".to_string()),
            _ => None,
        };
        let p = ConnParams::parse_url("postgres://", &env).unwrap();
        assert_eq!(
            (p.first_host(), p.first_port(), p.user(), p.dbname()),
            ("dbhost", "5432", "alice", "alice")
        );
    }

    #[test]
    fn conninfo_has_no_password_and_quotes() {
        let p = ConnParams::parse_url("postgres://u:secret@h/it's?application_name=a%5Cb", &no_env)
            .unwrap();
        let ci = p.conninfo();
        assert!(!ci.contains("secret"));
        assert_eq!(
            ci,
            r"application_name='a\\b' dbname='it\'s' host='h' port='5432' user='u'"
        );
        assert_eq!(p.display(), "postgres://u@h:5432/it%27s");
    }

    #[test]
    fn tls_modes() {
        let ok = ConnParams::parse_url("postgres://u@h/d?sslmode=prefer", &no_env).unwrap();
        assert!(ok.tokio_config(None).is_ok());
        let tls = ConnParams::parse_url("postgres://u@h/d?sslmode=require", &no_env).unwrap();
        assert_eq!(
            tls.tokio_config(None).unwrap_err().kind(),
            ErrorKind::Config
        );
    }

    #[test]
    fn pgpass() {
        let text = "# comment\nother:5432:*:u:nope\nlocalhost:5432:app:u:sock\\:pw\n*:*:*:u:any\n";
        let cases = [
            (("localhost", "5432", "app", "u"), Some("sock:pw")),
            (("/var/run/postgresql", "5432", "app", "u"), Some("sock:pw")),
            (("db", "5433", "x", "u"), Some("any")),
            (("other", "5432", "x", "u"), Some("nope")),
            (("db", "5432", "x", "v"), None),
        ];
        for ((h, p, d, u), want) in cases {
            assert_eq!(
                pgpass_lookup(text, h, p, d, u).as_deref(),
                want,
                "{h} {p} {d} {u}"
            );
        }
    }

    #[test]
    fn password_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let pgpass = dir.path().join("pgpass");
        std::fs::write(&pgpass, "*:*:*:*:from-pgpass\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
        let pgpass_s = pgpass.display().to_string();
        let env_all = |k: &str| match k {
            "PGPASSWORD" => Some("from-env".to_string()),
            "PGPASSFILE" => Some(pgpass_s.clone()),
            _ => None,
        };
        let env_file_only = |k: &str| {
            if k == "PGPASSFILE" {
                Some(pgpass_s.clone())
            } else {
                None
            }
        };
        let with = ConnParams::parse_url("postgres://u:from-url@h/d", &no_env).unwrap();
        let without = ConnParams::parse_url("postgres://u@h/d", &no_env).unwrap();
        let got = |p: &ConnParams, f: Option<&Path>, env: &dyn Fn(&str) -> Option<String>| {
            resolve_password(p, f, env).unwrap()
        };
        assert_eq!(
            got(&with, Some(&file), &env_all),
            Some(("from-url".into(), PasswordSource::Url))
        );
        assert_eq!(
            got(&without, Some(&file), &env_all),
            Some(("from-file".into(), PasswordSource::File))
        );
        assert_eq!(
            got(&without, None, &env_all),
            Some(("from-env".into(), PasswordSource::Env))
        );
        assert_eq!(
            got(&without, None, &env_file_only),
            Some(("from-pgpass".into(), PasswordSource::PgPass))
        );
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            got(&without, None, &env_file_only),
            None,
            "a world-readable pgpass is ignored"
        );
        let e = resolve_password(&without, Some(&dir.path().join("missing")), &no_env).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
    }
}
