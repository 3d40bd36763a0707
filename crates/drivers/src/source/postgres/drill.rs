//! Restore drills of PostgreSQL backups: where the scratch copy goes, its checks, and the
//! removal of what killed drills left.
//!
//! - Beside the source ([`Place::Beside`]): scratch databases on the source server, named
//!   [`ScratchName::render`] with `_` (`drkit_drill_<job>_<time>_<tag>`, and
//!   `..._<tag>_<db>` for each database of a backup of several), at most 63 bytes.
//! - A scratch server (`target = URL`): the same scratch databases, created there.
//! - A throwaway container (`image = "postgres:16"`): a container of the image on a private
//!   network drkit creates, its data in an anonymous volume, reached at the container's
//!   address; the databases (and the roles of a `globals` backup) keep their own names.
//!   A server older than the one the backup was taken from fails the drill.
//!
//! Only names that are drkit scratch names ([`is_scratch_name`]) are ever dropped. Checks
//! run in a `BEGIN READ ONLY` transaction; a check's SQL may start with `DB:` to pick an
//! archived database of a backup of several (else the first one).

use std::time::Duration;

use chrono::{DateTime, Utc};
use drkit_core::drill::{scratch_time, Place, Query, Scratch, ScratchName, SCRATCH_PREFIX};
use drkit_core::{Error, Manifest, Result};
use tokio_postgres::types::Type;
use tokio_postgres::SimpleQueryMessage;

use super::conn::{self, pg_error, ConnParams};
use super::restore;
use super::tools::{Exec, Version};
use super::PostgresSource;

/// PostgreSQL's limit on a name, in bytes (NAMEDATALEN - 1).
const MAX_NAME: usize = 63;

/// The note of a drill beside the source.
pub const BESIDE_NOTE: &str = "the drill restores into scratch databases on the source server (it loads it); set drill.target or drill.image for a separate server";

/// The label on a throwaway container and its network; its value is the scratch name.
pub const LABEL: &str = "drkit.drill";

/// Where the data of a throwaway container lives (an anonymous volume).
pub const DATA_DIR: &str = "/var/lib/postgresql/data";

/// How long a throwaway container may take to answer.
const WAIT: Duration = Duration::from_secs(120);

/// Whether `name` is a drkit scratch name: the prefix, and a time and tag that
/// [`scratch_time`] reads.
pub fn is_scratch_name(name: &str) -> bool {
    name.starts_with(SCRATCH_PREFIX) && scratch_time(name).is_some()
}

/// `(the archive holds several streams, the archived databases in order)`, as the manifest
/// says (what it says is checked again by the restore).
fn archived(manifest: &Manifest) -> (bool, Vec<String>) {
    let tar = manifest.source.get("layout").and_then(|l| l.as_str()) == Some("tar");
    let from_stats = manifest
        .stats
        .get("databases")
        .and_then(|d| d.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|d| d.get("name").and_then(|n| n.as_str()).map(String::from))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    (tar, from_stats)
}

/// The scratch database name (with `*` for each archived database of a backup of several),
/// such that every database's name stays within 63 bytes.
fn scratch_db(name: &ScratchName, tar: bool, dbs: &[String]) -> Result<String> {
    if !tar {
        return Ok(name.render('_', MAX_NAME));
    }
    let longest = dbs.iter().map(String::len).max().unwrap_or(0);
    // prefix, `_<time>_<tag>`: the least a scratch name holds.
    let least = SCRATCH_PREFIX.len() + 1 + 15 + 1 + 8;
    if least + 1 + longest > MAX_NAME {
        let db = dbs
            .iter()
            .find(|d| d.len() == longest)
            .cloned()
            .unwrap_or_default();
        return Err(Error::config(format!(
            "database {db:?} of the backup has a name too long for a scratch database ({} bytes; a scratch name adds {}, and PostgreSQL allows {MAX_NAME}): drill into a throwaway container instead (drill.image), where the databases keep their names",
            longest,
            least + 1
        )));
    }
    Ok(format!("{}_*", name.render('_', MAX_NAME - 1 - longest)))
}

/// `url` with its database replaced by `db` (user, password, hosts and parameters kept).
fn url_with_dbname(url: &str, db: &str) -> Result<String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| Error::config("drill.target must be a postgres:// url"))?;
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or("");
    let mut out = format!("{scheme}://{authority}/{db}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// The connection for CREATE and DROP DATABASE on the server of `params`: its own database,
/// unless that is a scratch database (then `postgres`).
fn maintenance(params: &ConnParams) -> ConnParams {
    if params.dbname().starts_with(SCRATCH_PREFIX) {
        params.with_dbname("postgres")
    } else {
        params.clone()
    }
}

/// A drill of PostgreSQL restores through pg_restore on this host: a pg_restore inside a
/// container (`exec`) cannot reach another server.
fn local_tools(src: &PostgresSource, what: &str) -> Result<()> {
    match src.tools.exec() {
        Exec::Local => Ok(()),
        Exec::Docker { container, .. } => Err(Error::config(format!(
            "a restore drill into {what} needs pg_restore on this host, but the job runs it in container {container:?} (exec): set bindir to a local PostgreSQL client, or drill beside the source"
        ))),
    }
}

/// Prepare the scratch place of a drill (see the module's documentation).
pub(super) async fn scratch(
    src: &PostgresSource,
    manifest: &Manifest,
    place: &Place,
    name: &ScratchName,
) -> Result<Scratch> {
    let (tar, dbs) = archived(manifest);
    let mut resources: Vec<String> = dbs.iter().map(|d| format!("db={d}")).collect();
    match place {
        Place::Beside => {
            let db = scratch_db(name, tar, &dbs)?;
            Ok(Scratch {
                to: db.clone(),
                shown: format!("{} on {}", db, src.params.server()),
                resources,
                notes: vec![BESIDE_NOTE.into()],
            })
        }
        Place::Server(url) => {
            local_tools(src, "drill.target")?;
            let env = |k: &str| std::env::var(k).ok();
            let target = ConnParams::parse_url(url, &env).map_err(|e| e.context("drill.target"))?;
            target
                .tokio_config(None)
                .map_err(|e| e.context("drill.target"))?;
            let db = scratch_db(name, tar, &dbs)?;
            let maint = maintenance(&target);
            // Reach it now: a clear error before anything is made.
            let password = restore::password_on(src, &maint)?;
            conn::connect(&maint, password.as_deref())
                .await
                .map_err(|e| e.context("drill.target"))?;
            resources.push(format!("maint={}", maint.dbname()));
            Ok(Scratch {
                to: url_with_dbname(url, &db)?,
                // `*` stands for each archived database: shown as such, not escaped.
                shown: target.with_dbname(&db).display().replace("%2A", "*"),
                resources,
                notes: vec![format!(
                    "the drill restores into scratch databases on server {}, dropped after",
                    target.server()
                )],
            })
        }
        Place::Image(image) => {
            local_tools(src, "a throwaway container")?;
            image_scratch(manifest, image, name, tar, &dbs, resources).await
        }
    }
}

#[cfg(not(feature = "docker"))]
async fn image_scratch(
    _manifest: &Manifest,
    image: &str,
    _name: &ScratchName,
    _tar: bool,
    _dbs: &[String],
    _resources: Vec<String>,
) -> Result<Scratch> {
    Err(Error::config(format!(
        "drill.image {image:?}: this drkit was built without Docker support"
    )))
}

/// Start a throwaway container of `image`, wait until its server answers, and check its
/// version against the one the backup was taken from.
#[cfg(feature = "docker")]
async fn image_scratch(
    manifest: &Manifest,
    image: &str,
    name: &ScratchName,
    tar: bool,
    dbs: &[String],
    mut resources: Vec<String>,
) -> Result<Scratch> {
    use crate::docker::throwaway::{Spec, Throwaway};
    let engine = crate::docker::Engine::connect(None).await?;
    let password = format!("{:032x}", rand::random::<u128>());
    let spec = Spec {
        name: name.render('-', MAX_NAME),
        image: image.to_string(),
        env: vec![format!("POSTGRES_PASSWORD={password}")],
        data_dir: Some(DATA_DIR.into()),
        label: (LABEL.into(), name.render('_', MAX_NAME)),
    };
    let t = Throwaway::start(&engine, &spec).await?;
    let server = match wait_for_server(&engine, &t, image, &password).await {
        Ok(s) => check_server_version(image, &s, recorded_version(manifest)).map(|()| s),
        Err(e) => Err(e),
    };
    let server = match server {
        Ok(s) => s,
        Err(e) => {
            if let Err(r) = t.remove(&engine).await {
                return Err(e.context(format!("(and removing the container failed: {r})")));
            }
            return Err(e);
        }
    };
    // The databases keep their names in a throwaway server.
    let db = if tar {
        "*".to_string()
    } else {
        dbs.first().cloned().unwrap_or_else(|| "postgres".into())
    };
    let db_url = if tar {
        db.clone()
    } else {
        percent_encoding::utf8_percent_encode(&db, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    resources.extend([
        format!("container={}", t.container),
        format!("network={}", t.network),
        format!("name={}", t.name),
    ]);
    Ok(Scratch {
        to: format!(
            "postgres://postgres:{password}@{}:5432/{db_url}?sslmode=disable",
            t.address
        ),
        shown: format!(
            "postgres://postgres@{}:5432/{db} in throwaway container {} (image {image})",
            t.address, t.name
        ),
        resources,
        notes: vec![format!(
            "the drill restores into a throwaway container {} of image {image} (PostgreSQL {}) on its own network, removed after with its volumes",
            t.name, server.version_text
        )],
    })
}

/// Wait until the server in `t` answers a query, or the container exits, or [`WAIT`]
/// passes. The error names the container and holds its last log lines (never the password).
#[cfg(feature = "docker")]
async fn wait_for_server(
    engine: &crate::docker::Engine,
    t: &crate::docker::throwaway::Throwaway,
    image: &str,
    password: &str,
) -> Result<super::dump::Server> {
    let env = |_: &str| None;
    let params = ConnParams::parse_url(
        &format!(
            "postgres://postgres@{}:5432/postgres?connect_timeout=2",
            t.address
        ),
        &env,
    )?;
    let started = std::time::Instant::now();
    let mut last: String;
    let why = loop {
        match conn::connect(&params, Some(password)).await {
            Ok(client) => match super::dump::server_version(&client, &params).await {
                Ok(s) => return Ok(s),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        if !t.running(engine).await {
            break "exited before PostgreSQL answered".to_string();
        }
        if started.elapsed() > WAIT {
            break format!("did not answer within {}s", WAIT.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let logs = t.last_logs(engine, 12).await;
    let logs = one_line_logs(&logs, password);
    Err(Error::source_error(format!(
        "throwaway container {} of image {image} {why} (last try: {}); its last log lines: {}",
        t.name,
        conn::one_line(&last.replace(password, "***")),
        if logs.is_empty() {
            "(none)".into()
        } else {
            logs
        }
    )))
}

/// Log lines on one line, ` | ` between them, with `secret` blanked out.
fn one_line_logs(logs: &str, secret: &str) -> String {
    logs.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.replace(secret, "***"))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The server version the backup was taken from, as its manifest records it.
fn recorded_version(manifest: &Manifest) -> Option<(Version, String)> {
    let text = manifest
        .source
        .get("server_version")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let num = manifest
        .source
        .get("server_version_num")
        .and_then(|v| v.as_u64())
        .and_then(|n| u32::try_from(n).ok())
        .map(Version)
        .or_else(|| Version::parse(&text))?;
    Some((
        num,
        if text.is_empty() {
            num.major_str()
        } else {
            text
        },
    ))
}

/// A throwaway server must be at least the major version the backup was taken from
/// (pg_restore of a newer server's dump into an older one fails, or loses what it cannot
/// hold). Without a recorded version, any server is taken.
fn check_server_version(
    image: &str,
    running: &super::dump::Server,
    recorded: Option<(Version, String)>,
) -> Result<()> {
    let Some((want, want_text)) = recorded else {
        return Ok(());
    };
    // `num / 100` orders major releases: 906 for 9.6, 1500 for 15 (`major()` does not).
    if running.version.0 / 100 < want.0 / 100 {
        return Err(Error::config(format!(
            "image {image} runs PostgreSQL {}, older than PostgreSQL {want_text}, which the backup was taken from: drill into image postgres:{} or newer (drill.image)",
            running.version_text,
            want.major_str()
        )));
    }
    Ok(())
}

/// The value of a resource `key=value` the scratch holds.
fn resource<'a>(scratch: &'a Scratch, key: &str) -> Option<&'a str> {
    scratch
        .resources
        .iter()
        .find_map(|r| r.strip_prefix(key)?.strip_prefix('='))
}

/// Where the scratch databases are, and the password: the `to` URL's server, or the source
/// server.
fn scratch_server(src: &PostgresSource, scratch: &Scratch) -> Result<(ConnParams, Option<String>)> {
    if scratch.to.contains("://") {
        let env = |k: &str| std::env::var(k).ok();
        let params = ConnParams::parse_url(&scratch.to, &env)?;
        let password = restore::password_on(src, &params)?;
        Ok((params, password))
    } else {
        let params = src.params.with_dbname(&scratch.to);
        let password = src.password_for(&params)?;
        Ok((params, password))
    }
}

/// Remove a drill's scratch place: the throwaway container, its volumes and network; or
/// the scratch databases.
pub(super) async fn cleanup(src: &PostgresSource, scratch: &Scratch) -> Result<()> {
    if let Some(container) = resource(scratch, "container") {
        return remove_container(
            container,
            resource(scratch, "network").unwrap_or(""),
            resource(scratch, "name").unwrap_or(container),
        )
        .await;
    }
    let (params, password) = scratch_server(src, scratch)?;
    let maint = match resource(scratch, "maint") {
        Some(db) => params.with_dbname(db),
        None => maintenance(&src.params),
    };
    let password = match resource(scratch, "maint") {
        Some(_) => password,
        None => src.password_for(&maint)?,
    };
    restore::drop_scratch(&maint, password.as_deref(), params.dbname()).await
}

#[cfg(feature = "docker")]
async fn remove_container(container: &str, network: &str, name: &str) -> Result<()> {
    let engine = crate::docker::Engine::connect(None).await?;
    crate::docker::throwaway::remove_parts(&engine, container, network, name).await
}

#[cfg(not(feature = "docker"))]
async fn remove_container(_container: &str, _network: &str, name: &str) -> Result<()> {
    Err(Error::config(format!(
        "container {name}: this drkit was built without Docker support"
    )))
}

/// When a scratch name says it was made, for the sweep's lines.
fn made_on(name: &str) -> String {
    scratch_time(name)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "an unknown date".into())
}

/// Remove what drills killed more than a day before `now` left at `place`. One line per
/// removal.
pub(super) async fn sweep(
    src: &PostgresSource,
    place: &Place,
    now: DateTime<Utc>,
) -> Result<Vec<String>> {
    let (maint, password) = match place {
        Place::Beside => {
            let maint = maintenance(&src.params);
            let password = src.password_for(&maint)?;
            (maint, password)
        }
        Place::Server(url) => {
            let env = |k: &str| std::env::var(k).ok();
            let target = ConnParams::parse_url(url, &env).map_err(|e| e.context("drill.target"))?;
            let maint = maintenance(&target);
            let password = restore::password_on(src, &maint)?;
            (maint, password)
        }
        Place::Image(_) => return sweep_containers(now).await,
    };
    let stale: Vec<String> = restore::scratch_databases(&maint, password.as_deref())
        .await?
        .into_iter()
        .filter(|n| drkit_core::drill::is_stale(n, now))
        .collect();
    let mut lines = Vec::new();
    for n in stale {
        restore::drop_databases(&maint, password.as_deref(), std::slice::from_ref(&n)).await?;
        lines.push(format!(
            "removed scratch database {n} on {} left by a drill killed on {}",
            maint.server(),
            made_on(&n)
        ));
    }
    Ok(lines)
}

#[cfg(feature = "docker")]
async fn sweep_containers(now: DateTime<Utc>) -> Result<Vec<String>> {
    let engine = crate::docker::Engine::connect(None).await?;
    let stale = |v: &str| is_scratch_name(v) && drkit_core::drill::is_stale(v, now);
    let removed = crate::docker::throwaway::sweep(&engine, LABEL, &stale).await?;
    Ok(removed
        .iter()
        .map(|n| {
            format!(
                "removed throwaway container {} (with its volumes and network) left by a drill killed on {}",
                n.replace('_', "-"),
                made_on(n)
            )
        })
        .collect())
}

#[cfg(not(feature = "docker"))]
async fn sweep_containers(_now: DateTime<Utc>) -> Result<Vec<String>> {
    Ok(Vec::new())
}

/// Split a check's `DB: sql` prefix off: `Some(db)` when the SQL starts with a word and a
/// colon (which no SQL statement does).
fn split_db_prefix(sql: &str) -> (Option<&str>, &str) {
    let trimmed = sql.trim_start();
    if let Some((head, rest)) = trimmed.split_once(':') {
        let word = !head.is_empty()
            && head
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'$'));
        if word && !rest.starts_with(':') && !rest.starts_with('=') {
            return (Some(head), rest.trim_start());
        }
    }
    (None, sql)
}

/// The database a check runs against: the one its prefix names, else the first.
fn check_database<'a>(archived: &'a [String], prefix: Option<&'a str>) -> Result<&'a str> {
    match prefix {
        None => Ok(archived.first().map(String::as_str).unwrap_or("")),
        Some(p) => archived
            .iter()
            .find(|d| d.as_str() == p)
            .map(String::as_str)
            .ok_or_else(|| {
                Error::config(format!(
                    "drill.checks: the check names database {p:?}, which the backup does not hold (it holds {})",
                    archived.join(", ")
                ))
            }),
    }
}

/// The JSON value of a column of type `ty` whose text (the simple protocol's) is `text`:
/// numbers as numbers, booleans, JSON as JSON, anything else as text.
fn json_value(ty: &Type, text: Option<&str>) -> serde_json::Value {
    use serde_json::Value;
    let Some(text) = text else {
        return Value::Null;
    };
    let number = |t: &str| {
        t.parse::<i64>().map(Value::from).ok().or_else(|| {
            t.parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
        })
    };
    let converted = match *ty {
        Type::BOOL => match text {
            "t" => Some(Value::Bool(true)),
            "f" => Some(Value::Bool(false)),
            _ => None,
        },
        Type::INT2
        | Type::INT4
        | Type::INT8
        | Type::OID
        | Type::FLOAT4
        | Type::FLOAT8
        | Type::NUMERIC => number(text),
        Type::JSON | Type::JSONB => serde_json::from_str(text).ok(),
        _ => None,
    };
    converted.unwrap_or_else(|| Value::String(text.to_string()))
}

/// Run a check against the restored copy (see the module's documentation).
pub(super) async fn check(
    src: &PostgresSource,
    scratch: &Scratch,
    query: &Query,
) -> Result<serde_json::Value> {
    let Query::Sql(sql) = query else {
        return Err(Error::config(format!(
            "drill.checks: the postgres driver runs sql checks, not {query}"
        )));
    };
    let archived: Vec<String> = scratch
        .resources
        .iter()
        .filter_map(|r| r.strip_prefix("db=").map(String::from))
        .collect();
    let (prefix, sql) = split_db_prefix(sql);
    let db = check_database(&archived, prefix)?;
    let (params, password) = scratch_server(src, scratch)?;
    let params = if params.dbname().contains('*') {
        params.with_dbname(&params.dbname().replace('*', db))
    } else {
        params
    };
    let client = conn::connect(&params, password.as_deref()).await?;
    let failed = |e: tokio_postgres::Error| {
        let base = pg_error(&e, &params, "running the check");
        if e.code() == Some(&tokio_postgres::error::SqlState::SYNTAX_ERROR) {
            Error::config(format!("drill.checks: {}", base.message()))
        } else {
            Error::integrity(format!(
                "the restored copy could not answer the check: {}",
                base.message()
            ))
        }
    };
    client
        .batch_execute("BEGIN READ ONLY")
        .await
        .map_err(|e| pg_error(&e, &params, "starting the check's read-only transaction"))?;
    // Prepared first: one statement, and the type of its first column.
    let statement = client.prepare(sql).await.map_err(failed)?;
    let Some(ty) = statement.columns().first().map(|c| c.type_().clone()) else {
        return Err(Error::config(format!(
            "drill.checks: {sql:?} returns no column: a check's SQL is a query whose first column of the first row is the value"
        )));
    };
    let messages = client.simple_query(sql).await.map_err(failed)?;
    let _ = client.batch_execute("ROLLBACK").await;
    let value = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(json_value(&ty, row.get(0))),
        _ => None,
    });
    Ok(value.unwrap_or(serde_json::Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn name(job: &str) -> ScratchName {
        ScratchName {
            job: job.into(),
            at: Utc.with_ymd_and_hms(2026, 12, 3, 4, 5, 6).unwrap(),
            tag: 0xab,
        }
    }

    #[test]
    fn scratch_names_fit_postgres() {
        let n = name("app");
        assert_eq!(
            scratch_db(&n, false, &["app".into()]).unwrap(),
            "drkit_drill_app_20261203T040506_000000ab"
        );
        let long = name(&"j".repeat(80));
        let single = scratch_db(&long, false, &["x".into()]).unwrap();
        assert_eq!(single.len(), 63);
        let dbs = vec!["a".to_string(), "twenty_chars_long_db".to_string()];
        let several = scratch_db(&long, true, &dbs).unwrap();
        for d in &dbs {
            let full = several.replace('*', d);
            assert!(full.len() <= 63, "{full}");
            assert!(is_scratch_name(&full), "{full}");
        }
        assert_eq!(several.replace('*', "twenty_chars_long_db").len(), 63);
        let e = scratch_db(&n, true, &["d".repeat(40)]).unwrap_err();
        assert!(e.to_string().contains("drill.image"), "{e}");
        assert!(!is_scratch_name("drkit_drill_deadbeef"));
        assert!(!is_scratch_name("app"));
    }

    #[test]
    fn urls_get_the_scratch_database() {
        assert_eq!(
            url_with_dbname("postgres://u:p%40w@h:5433/postgres?sslmode=disable", "s_*").unwrap(),
            "postgres://u:p%40w@h:5433/s_*?sslmode=disable"
        );
        assert_eq!(
            url_with_dbname("postgresql://h", "s").unwrap(),
            "postgresql://h/s"
        );
    }

    fn server(num: u32, text: &str) -> super::super::dump::Server {
        super::super::dump::Server {
            version: Version(num),
            version_text: text.into(),
        }
    }

    #[test]
    fn an_older_server_fails_the_drill() {
        let e = check_server_version(
            "postgres:15",
            &server(150018, "15.18"),
            Some((Version(160004), "16.4".into())),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("older than PostgreSQL 16.4"), "{msg}");
        assert!(msg.contains("postgres:16 or newer"), "{msg}");
        for recorded in [
            Some((Version(150002), "15.2".into())),
            Some((Version(140010), "14.10".into())),
            Some((Version(90624), "9.6.24".into())),
            None,
        ] {
            check_server_version("i", &server(150018, "15.18"), recorded).unwrap();
        }
    }

    #[test]
    fn check_prefixes_and_values() {
        assert_eq!(split_db_prefix("app: SELECT 1"), (Some("app"), "SELECT 1"));
        assert_eq!(split_db_prefix("SELECT 1::int"), (None, "SELECT 1::int"));
        assert_eq!(split_db_prefix("SELECT 'a:b'"), (None, "SELECT 'a:b'"));
        assert_eq!(split_db_prefix("x::int"), (None, "x::int"));
        let dbs = vec!["app".to_string(), "other".to_string()];
        assert_eq!(check_database(&dbs, None).unwrap(), "app");
        assert_eq!(check_database(&dbs, Some("other")).unwrap(), "other");
        assert!(check_database(&dbs, Some("nope")).is_err());
        assert_eq!(json_value(&Type::INT8, Some("42")), json!(42));
        assert_eq!(json_value(&Type::NUMERIC, Some("1.5")), json!(1.5));
        assert_eq!(json_value(&Type::FLOAT8, Some("NaN")), json!("NaN"));
        assert_eq!(json_value(&Type::BOOL, Some("t")), json!(true));
        assert_eq!(json_value(&Type::TEXT, Some("12")), json!("12"));
        assert_eq!(
            json_value(&Type::JSONB, Some("{\"a\": 1}")),
            json!({"a": 1})
        );
        assert_eq!(json_value(&Type::TEXT, None), json!(null));
        assert_eq!(one_line_logs("a pw\n\n b\n", "pw"), "a *** | b");
    }
}
