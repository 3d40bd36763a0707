//! PostgreSQL source: `pg_dump --format=custom` streamed into the pipeline, with stats read
//! in the dump's own snapshot; restore streamed into `pg_restore`.
//!
//! Backup, for each database: drkit opens a REPEATABLE READ transaction, exports its
//! snapshot (`pg_export_snapshot()`), starts `pg_dump --snapshot=...` on it, and counts the
//! rows of the dumped tables inside the same transaction while pg_dump runs, so the
//! manifest's counts are exactly what the dump holds. pg_dump's stdout is the raw stream;
//! its stderr is drained aside, and a non-zero exit or a signal fails the backup.
//!
//! Layout of the raw stream: one database without `globals` is a plain pg_dump custom
//! archive (`data.pgdump`, readable by `pg_restore` as is). Several databases, or the roles
//! (`globals = true`), go in one tar stream (`data.tar`, see [`archive`]).
//!
//! The archive is untrusted on restore: the roles script is never given to psql but checked
//! and run statement by statement ([`globals`]), the index's file names are checked before
//! they become paths ([`archive::check_file_name`]), and with `restore_role` pg_restore runs
//! `--role=NAME`.
//!
//! Restore, in one pass (the pipeline checks the checksums as the stream ends): the archive
//! is streamed into `pg_restore --single-transaction`; the last chunk of every database is
//! held back until the whole stream has been read and checked, so a damaged archive never
//! commits. With `jobs`, the archive is staged in a temp folder and restored with
//! `pg_restore --jobs`; an archive with roles is staged too, so the roles run only after the
//! checksums matched. Then the row counts are compared with the manifest.

pub(crate) mod archive;
pub(crate) mod conn;
mod deep;
mod drill;
mod dump;
pub(crate) mod globals;
mod restore;
pub(crate) mod stats;
pub(crate) mod tools;

use std::path::PathBuf;

use async_trait::async_trait;
use drkit_core::{
    BoxRead, DriverSpec, Dump, Error, Manifest, RestoreOptions, RestoreReport, Result, Source,
};
use serde::Deserialize;

use conn::ConnParams;
use stats::{Filters, StatsMode};
use tools::{Exec, Tools};

/// `databases = [...]` or `databases = "all"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum DatabasesConfig {
    All(String),
    List(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecConfig {
    docker: String,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    port: Option<u16>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PostgresConfig {
    url: String,
    #[serde(default)]
    password_file: Option<PathBuf>,
    #[serde(default)]
    databases: Option<DatabasesConfig>,
    #[serde(default)]
    schemas: Vec<String>,
    #[serde(default)]
    exclude_schemas: Vec<String>,
    #[serde(default)]
    tables: Vec<String>,
    #[serde(default)]
    exclude_tables: Vec<String>,
    #[serde(default)]
    globals: bool,
    #[serde(default)]
    stats: StatsMode,
    #[serde(default)]
    bindir: Option<PathBuf>,
    #[serde(default)]
    pg_dump: Option<String>,
    #[serde(default)]
    pg_restore: Option<String>,
    #[serde(default)]
    pg_dumpall: Option<String>,
    #[serde(default)]
    psql: Option<String>,
    #[serde(default)]
    exec: Option<ExecConfig>,
    #[serde(default)]
    restore_role: Option<String>,
}

/// Which databases a job dumps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Databases {
    /// The url's database.
    Url,
    /// These, in this order.
    List(Vec<String>),
    /// Every database that accepts connections and is not a template.
    All,
}

impl Databases {
    /// `databases = "all"`, or a list of distinct names (not empty); the url's database
    /// when unset.
    fn from_config(databases: Option<DatabasesConfig>, what: &str) -> Result<Databases> {
        Ok(match databases {
            None => Databases::Url,
            Some(DatabasesConfig::All(s)) if s == "all" => Databases::All,
            Some(DatabasesConfig::All(s)) => {
                return Err(Error::config(format!(
                    "{what}.databases: {s:?} is not allowed: write \"all\" or a list of names"
                )))
            }
            Some(DatabasesConfig::List(v)) if v.is_empty() => {
                return Err(Error::config(format!(
                    "{what}.databases is empty: name at least one database, or write \"all\""
                )))
            }
            Some(DatabasesConfig::List(v)) => {
                let mut seen = std::collections::BTreeSet::new();
                for d in &v {
                    if d.is_empty() || !seen.insert(d) {
                        return Err(Error::config(format!(
                            "{what}.databases: {d:?} is empty or listed twice"
                        )));
                    }
                }
                Databases::List(v)
            }
        })
    }
}

/// Where the PostgreSQL programs run: here, or inside a named container (`exec`).
fn exec(exec: Option<ExecConfig>, what: &str) -> Result<Exec> {
    Ok(match exec {
        None => Exec::Local,
        Some(e) if e.docker.trim().is_empty() => {
            return Err(Error::config(format!(
                "{what}.exec.docker is empty: name the container"
            )))
        }
        Some(e) => Exec::Docker {
            container: e.docker,
            host: e.host,
            port: e.port,
        },
    })
}

/// A PostgreSQL server (one database, several, or all) as a source.
#[derive(Debug, Clone)]
pub struct PostgresSource {
    params: ConnParams,
    password_file: Option<PathBuf>,
    databases: Databases,
    filters: Filters,
    globals: bool,
    stats: StatsMode,
    tools: Tools,
    /// Role that restores run as (`pg_restore --role`, `SET ROLE` for the roles script).
    restore_role: Option<String>,
}

impl PostgresSource {
    /// Build from a `type = "postgres"` table. Nothing is contacted.
    pub fn from_spec(spec: &DriverSpec, what: &str) -> Result<Self> {
        let c: PostgresConfig = spec.parse(what)?;
        let env = |k: &str| std::env::var(k).ok();
        let params =
            ConnParams::parse_url(&c.url, &env).map_err(|e| e.context(format!("{what}.url")))?;
        params
            .tokio_config(None)
            .map_err(|e| e.context(format!("{what}.url")))?;
        let databases = Databases::from_config(c.databases, what)?;
        let filters = Filters::parse(
            &c.schemas,
            &c.exclude_schemas,
            &c.tables,
            &c.exclude_tables,
            what,
        )?;
        let exec = exec(c.exec, what)?;
        if let Some(r) = &c.restore_role {
            if r.is_empty() || r.contains('\0') || r.len() > 63 {
                return Err(Error::config(format!(
                    "{what}.restore_role {r:?} is not a role name"
                )));
            }
        }
        let tools = Tools::new(
            exec,
            c.bindir,
            [c.pg_dump, c.pg_restore, c.pg_dumpall, c.psql],
        );
        Ok(PostgresSource {
            params,
            password_file: c.password_file,
            databases,
            filters,
            globals: c.globals,
            stats: c.stats,
            tools,
            restore_role: c.restore_role,
        })
    }

    /// Whether the raw stream is one plain pg_dump archive (else a tar of several streams).
    pub fn single_archive(&self) -> bool {
        !self.globals
            && match &self.databases {
                Databases::Url => true,
                Databases::List(v) => v.len() == 1,
                Databases::All => false,
            }
    }

    /// The password for a connection to `params`, found as [`conn::resolve_password`] says.
    fn password_for(&self, params: &ConnParams) -> Result<Option<String>> {
        let env = |k: &str| std::env::var(k).ok();
        Ok(conn::resolve_password(params, self.password_file.as_deref(), &env)?.map(|(p, _)| p))
    }
}

/// The prefix of drill scratch databases (`drkit_drill_<job>_<time>_<tag>`, and
/// `..._<tag>_<db>` for each database of a backup of several; see [`drkit_core::drill`]).
pub const DRILL_PREFIX: &str = "drkit_drill_";

/// `PGDMP`, the magic of a pg_dump custom archive.
pub const PGDMP: &[u8] = b"PGDMP";

/// Check the first bytes of a raw PostgreSQL dump: a pg_dump custom archive, or drkit's tar
/// of several streams starting with its index.
pub fn check_head(head: &[u8]) -> Result<()> {
    if head.starts_with(PGDMP) {
        return Ok(());
    }
    if head.len() >= 512 {
        let block: &[u8; 512] = head[..512].try_into().expect("512 bytes");
        if let Ok(Some((name, _))) = archive::parse_header(block) {
            if name == archive::INDEX_NAME {
                return Ok(());
            }
        }
    }
    Err(Error::integrity(
        "the raw dump is neither a pg_dump custom archive (PGDMP) nor a drkit PostgreSQL tar",
    ))
}

#[async_trait]
impl Source for PostgresSource {
    fn driver(&self) -> &'static str {
        "postgres"
    }

    fn extension(&self) -> &'static str {
        if self.single_archive() {
            "pgdump"
        } else {
            "tar"
        }
    }

    fn describe(&self) -> String {
        let dbs = match &self.databases {
            Databases::Url => String::new(),
            Databases::List(v) => format!(" (databases {})", v.join(", ")),
            Databases::All => " (all databases)".into(),
        };
        format!("postgres {}{dbs}", self.params.display())
    }

    async fn dump(&self) -> Result<Dump> {
        dump::dump(self).await
    }

    async fn plan_restore(
        &self,
        manifest: &Manifest,
        opts: &RestoreOptions,
    ) -> Result<RestoreReport> {
        restore::plan(self, manifest, opts).await.map(|p| p.report)
    }

    async fn restore(
        &self,
        data: BoxRead,
        manifest: &Manifest,
        opts: &RestoreOptions,
    ) -> Result<RestoreReport> {
        restore::restore(self, data, manifest, opts).await
    }

    async fn preflight(&self) -> Result<Vec<String>> {
        dump::preflight(self).await
    }

    async fn drill_scratch(
        &self,
        manifest: &Manifest,
        place: &drkit_core::drill::Place,
        name: &drkit_core::drill::ScratchName,
    ) -> Result<Option<drkit_core::drill::Scratch>> {
        drill::scratch(self, manifest, place, name).await.map(Some)
    }

    async fn drill_cleanup(&self, scratch: &drkit_core::drill::Scratch) -> Result<()> {
        drill::cleanup(self, scratch).await
    }

    async fn drill_sweep(
        &self,
        place: &drkit_core::drill::Place,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<String>> {
        drill::sweep(self, place, now).await
    }

    async fn drill_check(
        &self,
        scratch: &drkit_core::drill::Scratch,
        query: &drkit_core::drill::Query,
    ) -> Result<serde_json::Value> {
        drill::check(self, scratch, query).await
    }

    fn measure(&self, stats: &serde_json::Value) -> drkit_core::suspect::Measure {
        crate::source::measure::postgres(stats)
    }

    fn check_structure(&self, head: &[u8]) -> Result<()> {
        check_head(head)
    }

    /// One pass is safe (see docs/postgres.md, "Restore in one pass"): each pg_restore runs
    /// `--single-transaction` and gets the last chunk of its database only once the whole
    /// archive was read without error, the databases drkit created are dropped when the
    /// restore fails, and an archive with the roles is staged whole before its roles script
    /// runs (the roles are not transactional with the databases).
    fn restores_in_one_pass(&self) -> bool {
        true
    }

    fn deep_check(&self, manifest: &Manifest) -> Option<Box<dyn drkit_core::DeepCheck>> {
        Some(deep::deep_check(manifest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> DriverSpec {
        let mut settings: toml::Table = toml::from_str(text).unwrap();
        settings.remove("type");
        DriverSpec {
            kind: "postgres".into(),
            settings,
        }
    }

    #[test]
    fn config_cases() {
        let ok =
            PostgresSource::from_spec(&spec("url = \"postgres://u:pw@h/app\""), "job.a.source")
                .unwrap();
        assert!(ok.single_archive());
        assert_eq!(ok.extension(), "pgdump");
        assert_eq!(ok.describe(), "postgres postgres://u@h:5432/app");
        let multi = PostgresSource::from_spec(
            &spec("url = \"postgres://u@h/app\"\ndatabases = \"all\"\nstats = \"estimate\""),
            "j",
        )
        .unwrap();
        assert_eq!(multi.extension(), "tar");
        assert_eq!(multi.stats, StatsMode::Estimate);
        let globals =
            PostgresSource::from_spec(&spec("url = \"postgres://u@h/app\"\nglobals = true"), "j")
                .unwrap();
        assert_eq!(globals.extension(), "tar");
        let one = PostgresSource::from_spec(&spec("url = \"postgres://u@h/app\"\ndatabases = [\"x\"]\nexec = { docker = \"db\", port = 5432 }"), "j").unwrap();
        assert!(one.single_archive());
        assert_eq!(one.tools.exec_label(), "docker:db");
        let role = PostgresSource::from_spec(
            &spec("url = \"postgres://u@h/app\"\nrestore_role = \"restorer\""),
            "j",
        )
        .unwrap();
        assert_eq!(role.restore_role.as_deref(), Some("restorer"));

        let bad = [
            ("url = \"mysql://u:pw@h/app\"", "postgres://"),
            ("url = \"postgres://h/app\"\nfoo = 1", "unknown field"),
            (
                "url = \"postgres://h/app\"\ndatabases = \"some\"",
                "write \"all\"",
            ),
            ("url = \"postgres://h/app\"\ndatabases = []", "is empty"),
            (
                "url = \"postgres://h/app\"\ndatabases = [\"a\", \"a\"]",
                "twice",
            ),
            (
                "url = \"postgres://h/app\"\nstats = \"fast\"",
                "unknown variant",
            ),
            (
                "url = \"postgres://h/app\"\ntables = [\"a.b.c\"]",
                "too many dots",
            ),
            (
                "url = \"postgres://h/app\"\nexec = { docker = \"\" }",
                "exec.docker is empty",
            ),
            (
                "url = \"postgres://h/app?sslmode=verify-full\"",
                "sslmode=verify-full",
            ),
            (
                "url = \"postgres://h/app\"\nrestore_role = \"\"",
                "restore_role",
            ),
        ];
        for (text, want) in bad {
            let e = PostgresSource::from_spec(&spec(text), "job.a.source").unwrap_err();
            assert_eq!(e.kind(), drkit_core::ErrorKind::Config, "{text}");
            let msg = e.to_string();
            assert!(msg.contains(want), "{text}: {msg}");
            assert!(!msg.contains("pw@"), "{msg}");
        }
    }

    #[tokio::test]
    async fn heads() {
        assert!(check_head(b"PGDMP\x01\x0e\x00").is_ok());
        let mut tar = Vec::new();
        archive::write_member(&mut tar, archive::INDEX_NAME, b"{}")
            .await
            .unwrap();
        assert!(check_head(&tar).is_ok());
        let mut other = Vec::new();
        archive::write_member(&mut other, "x", b"{}").await.unwrap();
        assert!(check_head(&other).is_err());
        assert!(check_head(b"SQLite format 3\0").is_err());
    }
}
