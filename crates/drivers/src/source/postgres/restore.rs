//! Restore: plan (where, and whether it may), stream into pg_restore (or stage for
//! `--jobs`), then compare the row counts with the manifest.

use std::collections::HashSet;

use drkit_core::{
    from_io, BoxRead, Error, ErrorKind, Manifest, RestoreOptions, RestoreReport, Result,
};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio_postgres::Client;

use super::archive::{self, Index, Sequence, TarReader};
use super::conn::{self, is_missing_database, pg_error, quote_ident, quote_literal, ConnParams};
use super::globals::{self, Action, Existing};
use super::stats::{self, DbStats, Stats, StatsMode, TableName, SYSTEM_SCHEMAS_SQL};
use super::tools::{check_version, Exec, Tool, Version};
use super::PostgresSource;
use crate::process::{Process, ProcessWriter};

/// The largest roles script read into memory (see [`globals::MAX_SCRIPT`]).
const MAX_GLOBALS: usize = globals::MAX_SCRIPT;

/// What the manifest's `source` says about the archive.
#[derive(Debug, Deserialize)]
struct SourceInfo {
    #[serde(default)]
    layout: Option<String>,
    #[serde(default)]
    pg_dump_version: Option<String>,
    #[serde(default)]
    globals: bool,
}

impl SourceInfo {
    /// The archive is drkit's tar of several streams (else one pg_dump archive).
    fn tar(&self) -> bool {
        self.layout.as_deref() == Some("tar")
    }
}

/// One database to restore.
#[derive(Debug, Clone)]
struct Target {
    /// Its stats in the manifest (name = the archived database).
    stats: DbStats,
    /// Where it goes.
    params: ConnParams,
    password: Option<String>,
    exists: bool,
    tables: i64,
}

/// A checked plan.
pub(super) struct Plan {
    pub report: RestoreReport,
    targets: Vec<Target>,
    stats: Stats,
    tar: bool,
    /// The server's maintenance connection (for CREATE DATABASE and the roles).
    maint: ConnParams,
    maint_password: Option<String>,
    jobs: Option<u32>,
    /// `job/id`, for messages.
    backup: String,
    /// The manifest says the archive holds the roles.
    globals: bool,
}

fn manifest_info(manifest: &Manifest) -> Result<(SourceInfo, Stats)> {
    let info: SourceInfo = serde_json::from_value(manifest.source.clone()).map_err(|e| {
        Error::integrity(format!(
            "backup {}/{}: its manifest's source is unreadable ({e})",
            manifest.job, manifest.id
        ))
    })?;
    let stats: Stats = serde_json::from_value(manifest.stats.clone()).map_err(|e| {
        Error::integrity(format!(
            "backup {}/{}: its manifest's stats are unreadable ({e})",
            manifest.job, manifest.id
        ))
    })?;
    Ok((info, stats))
}

/// Tables of the current database (to refuse restoring over data).
async fn count_tables(client: &Client, params: &ConnParams) -> Result<i64> {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') AND {SYSTEM_SCHEMAS_SQL} \
                 AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')"
            ),
            &[],
        )
        .await
        .map_err(|e| pg_error(&e, params, "looking at the destination"))?;
    Ok(row.get(0))
}

/// Connect to `params`, or `None` when its database does not exist.
async fn try_connect(params: &ConnParams, password: Option<&str>) -> Result<Option<Client>> {
    match conn::connect(params, password).await {
        Ok(c) => Ok(Some(c)),
        Err(e) if is_missing_database(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Passwords for the connections of a restore. The job's password_file belongs to the
/// job's server: it is never sent elsewhere.
struct Passwords<'a> {
    file: Option<&'a std::path::Path>,
}

impl<'a> Passwords<'a> {
    fn new(src: &'a PostgresSource, base: &ConnParams) -> Passwords<'a> {
        let same_server = base.server() == src.params.server();
        Passwords {
            file: src.password_file.as_deref().filter(|_| same_server),
        }
    }

    fn get(&self, p: &ConnParams) -> Result<Option<String>> {
        let env = |k: &str| std::env::var(k).ok();
        Ok(conn::resolve_password(p, self.file, &env)?.map(|(pw, _)| pw))
    }
}

pub(super) async fn plan(
    src: &PostgresSource,
    manifest: &Manifest,
    opts: &RestoreOptions,
) -> Result<Plan> {
    let (info, stats) = manifest_info(manifest)?;
    let tar = info.tar();
    let base = destination_base(src, manifest, opts, &info, &stats)?;
    let passwords = Passwords::new(src, &base);
    check_jobs(src, opts)?;
    check_archive(src, manifest, &info, &stats).await?;
    let targets = find_targets(opts, &base, tar, &stats, &passwords).await?;
    let replaces_existing = refuse_busy(&targets, opts.force)?;
    let needs_maint = info.globals || targets.iter().any(|t| !t.exists);
    let (maint, maint_password) = if needs_maint {
        maintenance(&base, &passwords).await?
    } else {
        (base.clone(), passwords.get(&base)?)
    };

    let mut notes = target_notes(&targets, info.globals);
    if let Some(role) = &src.restore_role {
        // Asked on the connection the restore makes first.
        let (cp, cpw) = if needs_maint {
            (&maint, &maint_password)
        } else {
            (&targets[0].params, &targets[0].password)
        };
        notes.extend(check_restore_role(role, cp, cpw.as_deref(), info.globals).await?);
    }
    if stats.row_counts == StatsMode::Estimate {
        notes.push("the backup recorded estimated row counts: the restore checks that its tables exist, not their counts".into());
    }
    let jobs = opts.jobs.filter(|n| *n > 1);
    if let Some(n) = jobs {
        notes.push(format!(
            "the archive is staged in a temp folder ({}) for pg_restore --jobs {n}",
            std::env::temp_dir().display()
        ));
    } else if info.globals && tar {
        notes.push(format!(
            "the archive is staged in a temp folder ({}) until all of it is read and checked: its roles run first, and cannot be rolled back",
            std::env::temp_dir().display()
        ));
    }
    let report = RestoreReport {
        destination: destination(&base, &targets, tar),
        replaces_existing,
        kept_previous: None,
        stats_checked: false,
        notes,
    };
    Ok(Plan {
        report,
        targets,
        stats,
        tar,
        maint,
        maint_password,
        jobs,
        backup: format!("{}/{}", manifest.job, manifest.id),
        globals: info.globals,
    })
}

/// Where `--to` sends the restore: the job's own server and database by default, a server
/// url, or a database name (with a `*` standing for each archived name when the archive
/// holds several databases).
fn destination_base(
    src: &PostgresSource,
    manifest: &Manifest,
    opts: &RestoreOptions,
    info: &SourceInfo,
    stats: &Stats,
) -> Result<ConnParams> {
    let tar = info.tar();
    let env = |k: &str| std::env::var(k).ok();
    let base = match opts.to.as_deref() {
        None => src.params.clone(),
        Some(to) if to.contains("://") => ConnParams::parse_url(to, &env).map_err(|e| e.context("--to"))?,
        Some(name) if tar && !name.contains('*') => {
            return Err(Error::config(format!(
                "--to {name:?} names one database, but backup {} holds {} databases{}: give a name with a * (each database X goes to the name with * replaced by X), or a server url (postgres://user@host:port/postgres)",
                manifest.id,
                stats.databases.len(),
                if info.globals { " and the roles" } else { "" }
            )))
        }
        Some(name) => src.params.with_dbname(name),
    };
    base.tokio_config(None).map_err(|e| e.context("--to"))?;
    Ok(base)
}

fn check_jobs(src: &PostgresSource, opts: &RestoreOptions) -> Result<()> {
    match opts.jobs {
        Some(0) => Err(Error::config("--jobs must be at least 1")),
        Some(n) if n > 1 && matches!(src.tools.exec(), Exec::Docker { .. }) => Err(Error::config(
            "--jobs needs pg_restore to read a staged file, which a program inside a container cannot: restore without --jobs, or configure a local pg_restore",
        )),
        _ => Ok(()),
    }
}

/// pg_restore reads archives of the pg_dump that wrote this one, and the manifest lists
/// databases that fit its layout.
async fn check_archive(
    src: &PostgresSource,
    manifest: &Manifest,
    info: &SourceInfo,
    stats: &Stats,
) -> Result<()> {
    let (restore_version, restore_text) = src.tools.version(Tool::PgRestore).await?;
    if let Some(dumped) = info.pg_dump_version.as_deref().and_then(Version::parse) {
        check_version(
            &src.tools,
            Tool::PgRestore,
            &restore_text,
            restore_version,
            dumped,
            &format!(
                "the archive (written by pg_dump {})",
                info.pg_dump_version.as_deref().unwrap_or("?")
            ),
        )?;
    }
    let backup = format!("backup {}/{}", manifest.job, manifest.id);
    if stats.databases.is_empty() {
        return Err(Error::integrity(format!(
            "{backup} lists no database in its manifest"
        )));
    }
    check_database_names(stats.databases.iter().map(|d| d.name.as_str()))
        .map_err(|why| Error::integrity(format!("{backup}: its manifest is refused: {why}")))?;
    if !info.tar() && stats.databases.len() != 1 {
        return Err(Error::integrity(format!(
            "{backup}: its manifest lists {} databases for a single pg_dump archive",
            stats.databases.len()
        )));
    }
    Ok(())
}

/// Each archived database's destination, and whether it exists and holds tables.
async fn find_targets(
    opts: &RestoreOptions,
    base: &ConnParams,
    tar: bool,
    stats: &Stats,
    passwords: &Passwords<'_>,
) -> Result<Vec<Target>> {
    let mut targets = Vec::new();
    for db in &stats.databases {
        // One database goes where --to says (or back to its own name); several keep their
        // names on the destination server. A `*` in the destination's name stands for the
        // archived name.
        let params = match opts.to.as_deref() {
            _ if base.dbname().contains('*') => {
                base.with_dbname(&base.dbname().replace('*', &db.name))
            }
            Some(_) if !tar => base.clone(),
            _ => base.with_dbname(&db.name),
        };
        let password = passwords.get(&params)?;
        let (exists, tables) = match try_connect(&params, password.as_deref()).await? {
            Some(client) => (true, count_tables(&client, &params).await?),
            None => (false, 0),
        };
        targets.push(Target {
            stats: db.clone(),
            params,
            password,
            exists,
            tables,
        });
    }
    Ok(targets)
}

/// Refuse to restore into databases that hold tables, unless `force`. Returns whether the
/// restore replaces existing data.
fn refuse_busy(targets: &[Target], force: bool) -> Result<bool> {
    let busy: Vec<&Target> = targets.iter().filter(|t| t.tables > 0).collect();
    if !busy.is_empty() && !force {
        let what = busy
            .iter()
            .map(|t| {
                format!(
                    "database {:?} on {} has {} tables",
                    t.params.dbname(),
                    t.params.server(),
                    t.tables
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Error::refused(format!(
            "{what}: restoring would mix the backup into existing data; pass --force to drop and recreate the backed-up objects (pg_restore --clean --if-exists), or restore elsewhere with --to"
        )));
    }
    Ok(!busy.is_empty())
}

/// A connection for CREATE DATABASE and the roles: the destination's database, else
/// postgres, else template1.
async fn maintenance(
    base: &ConnParams,
    passwords: &Passwords<'_>,
) -> Result<(ConnParams, Option<String>)> {
    let password = passwords.get(base)?;
    if !base.dbname().contains('*') && try_connect(base, password.as_deref()).await?.is_some() {
        return Ok((base.clone(), password));
    }
    for db in ["postgres", "template1"] {
        let p = base.with_dbname(db);
        let pw = passwords.get(&p)?;
        if try_connect(&p, pw.as_deref()).await?.is_some() {
            return Ok((p, pw));
        }
    }
    Err(Error::source_error(format!(
        "cannot reach a database on {} to create the missing ones from (tried {:?}, postgres, template1)",
        base.server(),
        base.dbname()
    )))
}

/// What the restore will do to each destination database, and to the roles.
fn target_notes(targets: &[Target], globals: bool) -> Vec<String> {
    let mut notes = Vec::new();
    for t in targets {
        if !t.exists {
            notes.push(format!(
                "database {:?} does not exist on {}: it will be created",
                t.params.dbname(),
                t.params.server()
            ));
        } else if t.tables > 0 {
            notes.push(format!("database {:?}: its {} tables are replaced where the backup has them (--clean --if-exists)", t.params.dbname(), t.tables));
        }
    }
    if globals {
        notes.push("roles and tablespaces of the backup are created where missing; existing ones are left as they are".into());
    }
    notes
}

/// `restore_role` exists on the destination and the url's user may SET ROLE to it. Returns
/// the notes about it.
async fn check_restore_role(
    role: &str,
    cp: &ConnParams,
    password: Option<&str>,
    globals: bool,
) -> Result<Vec<String>> {
    let mut notes = vec![format!(
        "pg_restore runs as role {role:?} (--role){}",
        if globals {
            ", and the roles script after SET ROLE"
        } else {
            ""
        }
    )];
    let client = conn::connect(cp, password).await?;
    let row = client
        .query_opt(
            "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), pg_has_role(current_user, oid, 'MEMBER') FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .map_err(|e| pg_error(&e, cp, "looking up restore_role"))?;
    let Some(row) = row else {
        return Err(Error::config(format!(
            "restore_role {role:?} does not exist on {}",
            cp.server()
        )));
    };
    let (superuser, member): (Option<bool>, bool) = (row.get(0), row.get(1));
    if !member {
        return Err(Error::config(format!(
            "restore_role {role:?}: user {:?} is not a member of that role on {}, so it cannot SET ROLE to it",
            cp.user(),
            cp.server()
        )));
    }
    if superuser == Some(true) {
        notes.push(format!(
            "user {:?} of the url is a superuser: a forged archive can still RESET ROLE back to it; for restores of archives you cannot verify, connect as a user that is not a superuser",
            cp.user()
        ));
    }
    Ok(notes)
}

/// The report's destination: the server and its databases, or the one database's url.
fn destination(base: &ConnParams, targets: &[Target], tar: bool) -> String {
    if tar || targets.len() > 1 {
        format!(
            "postgres://{}@{} (databases {})",
            base.user(),
            base.server(),
            targets
                .iter()
                .map(|t| t.params.dbname().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        targets[0].params.display()
    }
}

/// The password drkit uses for a connection to `params` on any server: the URL's, the job's
/// `password_file` only when `params` is on the job's own server, then `PGPASSWORD` and
/// `~/.pgpass` (as a restore with `--to URL` finds it).
pub(super) fn password_on(src: &PostgresSource, params: &ConnParams) -> Result<Option<String>> {
    Passwords::new(src, params).get(params)
}

/// The drill scratch databases on the server of `maint` (a connection to a database that is
/// not one of them): every database whose name is a drkit scratch name
/// ([`super::drill::is_scratch_name`]).
pub(super) async fn scratch_databases(
    maint: &ConnParams,
    password: Option<&str>,
) -> Result<Vec<String>> {
    let client = conn::connect(maint, password).await?;
    let like = format!("{}%", super::DRILL_PREFIX.replace('_', "\\_"));
    Ok(client
        .query(
            "SELECT datname::text FROM pg_database WHERE datname LIKE $1 ORDER BY datname",
            &[&like],
        )
        .await
        .map_err(|e| pg_error(&e, maint, "listing drill databases"))?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .filter(|n| super::drill::is_scratch_name(n))
        .collect())
}

/// Drop the drill databases `names` on the server of `maint`. Refuses, before dropping
/// anything, any name that is not a drkit scratch name.
pub(super) async fn drop_databases(
    maint: &ConnParams,
    password: Option<&str>,
    names: &[String],
) -> Result<()> {
    if let Some(n) = names.iter().find(|n| !super::drill::is_scratch_name(n)) {
        return Err(Error::refused(format!(
            "{n:?} is not a drill scratch database: not dropping it"
        )));
    }
    if names.is_empty() {
        return Ok(());
    }
    let client = conn::connect(maint, password).await?;
    for n in names {
        // FORCE (PostgreSQL 13+) ends sessions a killed pg_restore left; older servers
        // take the plain form.
        let plain = format!("DROP DATABASE IF EXISTS {}", quote_ident(n));
        if client
            .batch_execute(&format!("{plain} WITH (FORCE)"))
            .await
            .is_err()
        {
            client
                .batch_execute(&plain)
                .await
                .map_err(|e| pg_error(&e, maint, &format!("dropping drill database {n:?}")))?;
        }
    }
    Ok(())
}

/// Drop the drill databases of `pattern` (a scratch name, or one with `*` standing for each
/// archived database) on the server of `maint`. Refuses a pattern that is not a drkit
/// scratch name, and drops only databases whose names are.
pub(super) async fn drop_scratch(
    maint: &ConnParams,
    password: Option<&str>,
    pattern: &str,
) -> Result<()> {
    let fixed = pattern.split('*').next().unwrap_or("");
    if !fixed.starts_with(super::DRILL_PREFIX)
        || pattern.contains("://")
        || !super::drill::is_scratch_name(&pattern.replace('*', "x"))
    {
        return Err(Error::refused(format!(
            "{pattern:?} is not a drill scratch database: not dropping it"
        )));
    }
    let names: Vec<String> = scratch_databases(maint, password)
        .await?
        .into_iter()
        .filter(|n| match pattern.split_once('*') {
            None => n == pattern,
            Some((head, tail)) => {
                n.len() > head.len() + tail.len() && n.starts_with(head) && n.ends_with(tail)
            }
        })
        .collect();
    drop_databases(maint, password, &names).await
}

/// Databases drkit created for this restore, dropped again if it fails.
struct Created {
    maint: ConnParams,
    password: Option<String>,
    names: Vec<String>,
    /// Owner of a created database whose archived owner does not exist here.
    fallback_owner: Option<String>,
}

impl Created {
    async fn create(&mut self, t: &Target, notes: &mut Vec<String>) -> Result<()> {
        let client = conn::connect(&self.maint, self.password.as_deref()).await?;
        let name = t.params.dbname();
        // The archived owner, when that role exists here (the roles of a `globals` backup
        // are restored before the databases).
        let owner_exists = client
            .query_opt(
                "SELECT 1 FROM pg_roles WHERE rolname = $1",
                &[&t.stats.owner],
            )
            .await
            .map_err(|e| pg_error(&e, &self.maint, "looking up the database owner"))?
            .is_some();
        let owner = if owner_exists {
            format!(" OWNER {}", quote_ident(&t.stats.owner))
        } else if let Some(r) = &self.fallback_owner {
            format!(" OWNER {}", quote_ident(r))
        } else {
            String::new()
        };
        let full = format!(
            "CREATE DATABASE {}{owner} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
            quote_ident(name),
            quote_literal(&t.stats.encoding),
            quote_literal(&t.stats.collate),
            quote_literal(&t.stats.ctype)
        );
        if let Err(first) = client.batch_execute(&full).await {
            let plain = format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(name));
            client
                .batch_execute(&plain)
                .await
                .map_err(|e| pg_error(&e, &self.maint, &format!("creating database {name:?}")))?;
            notes.push(format!(
                "database {name:?} was created with the server's default encoding and locale ({} {} / {} was refused: {})",
                t.stats.encoding,
                t.stats.collate,
                t.stats.ctype,
                first.as_db_error().map(|d| conn::one_line(d.message())).unwrap_or_default()
            ));
        } else {
            notes.push(format!(
                "created database {name:?}{}",
                if owner_exists {
                    format!(" owned by {:?}", t.stats.owner)
                } else {
                    String::new()
                }
            ));
        }
        self.names.push(name.to_string());
        Ok(())
    }

    /// Keep `name`: its restore committed.
    fn keep(&mut self, name: &str) {
        self.names.retain(|n| n != name);
    }

    async fn drop_all(&mut self) {
        if self.names.is_empty() {
            return;
        }
        if let Ok(client) = conn::connect(&self.maint, self.password.as_deref()).await {
            for n in self.names.drain(..) {
                // FORCE (PostgreSQL 13+) ends the killed pg_restore's session if the server
                // has not noticed yet.
                let plain = format!("DROP DATABASE IF EXISTS {}", quote_ident(&n));
                if client
                    .batch_execute(&format!("{plain} WITH (FORCE)"))
                    .await
                    .is_err()
                {
                    let _ = client.batch_execute(&plain).await;
                }
            }
        }
    }
}

fn pg_restore_args(t: &Target, src: &PostgresSource, force: bool) -> Vec<String> {
    let child = src.tools.child_params(&t.params);
    let mut args = vec![
        "--no-password".to_string(),
        "--exit-on-error".to_string(),
        format!("--dbname={}", child.conninfo()),
    ];
    if force {
        args.push("--clean".into());
        args.push("--if-exists".into());
    }
    if let Some(role) = &src.restore_role {
        args.push(format!("--role={role}"));
    }
    args
}

/// A pg_restore reading stdin that always lags one chunk behind: the last chunk reaches it
/// only with [`Feed::finish`], after the whole archive was read and checked, so pg_restore
/// cannot commit a stream that later turns out damaged.
struct Feed {
    writer: ProcessWriter,
    held: Vec<u8>,
    db: String,
}

impl Feed {
    fn start(src: &PostgresSource, t: &Target, force: bool) -> Result<Feed> {
        let mut args = pg_restore_args(t, src, force);
        args.push("--single-transaction".into());
        let mut cmd = src
            .tools
            .command(Tool::PgRestore, &args, t.password.as_deref(), true);
        let name = format!("pg_restore into database {:?}", t.params.dbname());
        Ok(Feed {
            writer: Process::writer(&mut cmd, &name)?,
            held: Vec::with_capacity(archive::PART_SIZE),
            db: t.params.dbname().to_string(),
        })
    }

    async fn push(&mut self, chunk: &[u8]) -> Result<()> {
        if !self.held.is_empty() {
            self.writer.send(&self.held).await?;
        }
        self.held.clear();
        self.held.extend_from_slice(chunk);
        Ok(())
    }

    async fn finish(mut self) -> Result<String> {
        if !self.held.is_empty() {
            self.writer.send(&self.held).await?;
        }
        self.writer.finish().await?;
        Ok(self.db)
    }
}

/// The roles, tablespaces and memberships of the destination (left as they are).
async fn existing(client: &Client, plan: &Plan) -> Result<Existing> {
    let err = |e: tokio_postgres::Error| pg_error(&e, &plan.maint, "listing roles");
    let names = |rows: Vec<tokio_postgres::Row>| {
        rows.iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<HashSet<String>>()
    };
    let roles = names(
        client
            .query("SELECT rolname::text FROM pg_roles", &[])
            .await
            .map_err(err)?,
    );
    let tablespaces = names(
        client
            .query("SELECT spcname::text FROM pg_tablespace", &[])
            .await
            .map_err(err)?,
    );
    let memberships = client
        .query(
            "SELECT r.rolname::text, m.rolname::text FROM pg_auth_members a \
             JOIN pg_roles r ON r.oid = a.roleid JOIN pg_roles m ON m.oid = a.member",
            &[],
        )
        .await
        .map_err(err)?
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    Ok(Existing {
        roles,
        tablespaces,
        memberships,
    })
}

/// The statements of the archive's roles script, each checked (see [`globals`]).
fn checked_statements(plan: &Plan, script: &[u8]) -> Result<Vec<globals::Statement>> {
    let refused = |why: String| {
        Error::integrity(format!(
            "backup {}: its roles script (pg_dumpall --globals-only) is refused, {why}: none of it was run (drkit runs only the statements pg_dumpall writes; the archive may have been tampered with)",
            plan.backup
        ))
    };
    let text = std::str::from_utf8(script).map_err(|e| {
        let line = script[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        refused(format!("line {line}: it is not UTF-8"))
    })?;
    globals::parse(text).map_err(|r| refused(r.to_string()))
}

/// Check the whole roles script of the archive (see [`globals`]), then run what it creates
/// that is missing here, statement by statement through drkit's own connection (never psql),
/// after `SET ROLE` when `restore_role` is set. Nothing runs when any statement is refused.
async fn run_globals(
    src: &PostgresSource,
    plan: &Plan,
    script: &[u8],
    notes: &mut Vec<String>,
) -> Result<()> {
    let statements = checked_statements(plan, script)?;
    let client = conn::connect(&plan.maint, plan.maint_password.as_deref()).await?;
    let err = |e: tokio_postgres::Error, doing: String| pg_error(&e, &plan.maint, &doing);
    client
        .batch_execute("SET standard_conforming_strings = on")
        .await
        .map_err(|e| err(e, "preparing the roles restore".into()))?;
    let existing = existing(&client, plan).await?;
    if let Some(role) = &src.restore_role {
        client
            .batch_execute(&format!("SET ROLE {}", quote_ident(role)))
            .await
            .map_err(|e| err(e, format!("SET ROLE {role:?} (restore_role)")))?;
    }
    let (session, work): (Vec<_>, Vec<_>) = statements
        .iter()
        .filter(|s| existing.keep(s))
        .partition(|s| s.action == Action::Session);
    run_statements(&client, plan, &session, &work).await?;
    let skipped = statements.len() - session.len() - work.len();
    notes.push(format!(
        "roles script: {} statements run{}",
        work.len(),
        if skipped > 0 {
            format!(", {skipped} left out (those roles, tablespaces or memberships exist)")
        } else {
            String::new()
        }
    ));
    Ok(())
}

/// Run the session settings, then the work, all in one transaction unless it creates a
/// tablespace (which cannot run in one).
async fn run_statements(
    client: &Client,
    plan: &Plan,
    session: &[&globals::Statement],
    work: &[&globals::Statement],
) -> Result<()> {
    let err = |e: tokio_postgres::Error, doing: String| pg_error(&e, &plan.maint, &doing);
    let run = |s: &globals::Statement| {
        let sql = s.sql.clone();
        let line = s.line;
        async move {
            client.simple_query(&sql).await.map(|_| ()).map_err(|e| {
                err(
                    e,
                    format!("restoring the roles (line {line} of the roles script)"),
                )
            })
        }
    };
    for s in session {
        run(s).await?;
    }
    let transaction = !work
        .iter()
        .any(|s| matches!(s.action, Action::CreateTablespace(_)));
    if transaction {
        client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| err(e, "restoring the roles".into()))?;
    }
    for s in work {
        run(s).await?;
    }
    if transaction {
        client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| err(e, "restoring the roles".into()))?;
    }
    Ok(())
}

/// Refuse a database stream that is not a pg_dump custom archive.
fn check_pgdmp(plan: &Plan, db: &str, first: &[u8]) -> Result<()> {
    if first.starts_with(super::PGDMP) {
        Ok(())
    } else {
        Err(Error::integrity(format!(
            "backup {}: the archive's stream of database {db:?} is not a pg_dump custom archive (PGDMP)",
            plan.backup
        )))
    }
}

fn read_error(e: std::io::Error) -> Error {
    from_io(e, ErrorKind::Storage, "reading the archive")
}

pub(super) async fn restore(
    src: &PostgresSource,
    data: BoxRead,
    manifest: &Manifest,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    let plan = plan(src, manifest, opts).await?;
    let mut notes = plan.report.notes.clone();
    let mut created = Created {
        maint: plan.maint.clone(),
        password: plan.maint_password.clone(),
        names: Vec::new(),
        fallback_owner: src.restore_role.clone(),
    };
    let result = match plan.jobs {
        // The roles script creates roles, which no pg_restore transaction can take back: an
        // archive that holds them is staged until the whole of it was read and checked.
        None if plan.globals && plan.tar => {
            staged_feed(src, &plan, data, opts.force, &mut created, &mut notes).await
        }
        None => stream(src, &plan, data, opts.force, &mut created, &mut notes).await,
        Some(n) => staged(src, &plan, data, opts.force, n, &mut created, &mut notes).await,
    };
    if let Err(e) = result {
        created.drop_all().await;
        return Err(e);
    }
    check_counts(&plan).await?;
    let mut report = plan.report.clone();
    report.stats_checked = plan.stats.row_counts == StatsMode::Exact;
    notes.retain(|n| !n.contains("will be created"));
    notes.push(format!(
        "restored {} tables{}{}",
        plan.stats.table_count,
        if report.stats_checked {
            format!(", {} rows: the counts match the manifest", plan.stats.rows)
        } else {
            ": all present".into()
        },
        if plan.stats.large_objects > 0 {
            format!(", and {} large objects", plan.stats.large_objects)
        } else {
            String::new()
        }
    ));
    report.notes = notes;
    Ok(report)
}

/// Stream the archive into pg_restore (and the roles script into drkit's own connection).
async fn stream(
    src: &PostgresSource,
    plan: &Plan,
    data: BoxRead,
    force: bool,
    created: &mut Created,
    notes: &mut Vec<String>,
) -> Result<()> {
    if !plan.tar {
        return stream_single(src, plan, data, force, created, notes).await;
    }
    let mut tar = TarReader::new(data);
    let index = read_index(&mut tar, plan).await?;
    let mut seq = Sequence::new(&index);
    let mut pending: Vec<Feed> = Vec::new();
    let mut current: Option<Feed> = None;
    // The roles script, read whole and checked before any of it runs.
    let mut roles: Option<Vec<u8>> = None;
    while let Some(member) = tar.next().await? {
        let (i, starts) = seq.next(&member.name)?;
        let entry = &index.streams[i];
        if starts {
            if let Some(f) = current.take() {
                pending.push(f);
            }
            if let Some(script) = roles.take() {
                run_globals(src, plan, &script, notes).await?;
            }
            match &entry.database {
                None => roles = Some(Vec::new()),
                Some(db) => {
                    check_pgdmp(plan, db, &member.data)?;
                    let t = target_of(plan, db)?;
                    if !t.exists {
                        created.create(t, notes).await?;
                    }
                    current = Some(Feed::start(src, t, force)?);
                }
            }
        }
        if let Some(f) = current.as_mut() {
            f.push(&member.data).await?;
        } else if let Some(script) = roles.as_mut() {
            push_script(plan, script, &member.data)?;
        }
    }
    if seq.started() != index.streams.len() {
        return Err(Error::integrity(format!(
            "the PostgreSQL archive holds {} of its {} streams: it is truncated",
            seq.started(),
            index.streams.len()
        )));
    }
    if let Some(script) = roles.take() {
        run_globals(src, plan, &script, notes).await?;
    }
    pending.extend(current.take());
    commit_all(pending, created).await
}

/// A single pg_dump archive, streamed into one pg_restore.
async fn stream_single(
    src: &PostgresSource,
    plan: &Plan,
    mut data: BoxRead,
    force: bool,
    created: &mut Created,
    notes: &mut Vec<String>,
) -> Result<()> {
    let t = &plan.targets[0];
    if !t.exists {
        created.create(t, notes).await?;
    }
    let mut feed = Feed::start(src, t, force)?;
    let mut buf = vec![0u8; archive::PART_SIZE];
    loop {
        let n = archive::fill(&mut data, &mut buf)
            .await
            .map_err(read_error)?;
        if n == 0 {
            break;
        }
        feed.push(&buf[..n]).await?;
    }
    let db = feed.finish().await?;
    created.keep(&db);
    Ok(())
}

/// The whole archive has been read and checked: let every pg_restore commit, in order.
async fn commit_all(pending: Vec<Feed>, created: &mut Created) -> Result<()> {
    let mut done: Vec<String> = Vec::new();
    for f in pending {
        let db = f.db.clone();
        match f.finish().await {
            Ok(db) => {
                created.keep(&db);
                done.push(db);
            }
            Err(e) if done.is_empty() => return Err(e),
            Err(e) => {
                return Err(e.context(format!(
                    "database {db:?} (already restored: {})",
                    done.join(", ")
                )))
            }
        }
    }
    Ok(())
}

/// Append a part of the roles script, up to [`MAX_GLOBALS`] bytes.
fn push_script(plan: &Plan, script: &mut Vec<u8>, data: &[u8]) -> Result<()> {
    if script.len() + data.len() > MAX_GLOBALS {
        return Err(Error::integrity(format!(
            "backup {}: its roles script is larger than {} MiB, more than pg_dumpall writes",
            plan.backup,
            MAX_GLOBALS >> 20
        )));
    }
    script.extend_from_slice(data);
    Ok(())
}

async fn read_index<R: tokio::io::AsyncRead + Unpin>(
    tar: &mut TarReader<R>,
    plan: &Plan,
) -> Result<Index> {
    let first = tar
        .next()
        .await?
        .ok_or_else(|| Error::integrity("the PostgreSQL archive is empty"))?;
    if first.name != archive::INDEX_NAME {
        return Err(Error::integrity(format!(
            "the PostgreSQL archive starts with {:?}, not its index",
            first.name
        )));
    }
    let index: Index = serde_json::from_slice(&first.data).map_err(|e| {
        Error::integrity(format!("the PostgreSQL archive's index is unreadable: {e}"))
    })?;
    if index.format != archive::FORMAT || index.version != 1 {
        return Err(Error::integrity(format!(
            "the PostgreSQL archive is in format {} version {}, which this drkit does not read",
            index.format, index.version
        )));
    }
    let names: Vec<&str> = plan.targets.iter().map(|t| t.stats.name.as_str()).collect();
    check_index(&index, plan.globals, &names).map_err(|why| {
        Error::integrity(format!(
            "backup {}: the PostgreSQL archive's index is refused: {why}",
            plan.backup
        ))
    })?;
    Ok(index)
}

/// The database names of a manifest: not empty, no NUL, each once.
fn check_database_names<'a>(
    names: impl Iterator<Item = &'a str>,
) -> std::result::Result<(), String> {
    let mut seen = HashSet::new();
    for n in names {
        if n.is_empty() || n.contains('\0') {
            return Err(format!("database name {n:?} is empty or holds a NUL"));
        }
        if !seen.insert(n) {
            return Err(format!("database {n:?} is listed twice"));
        }
    }
    Ok(())
}

/// Check an archive's index against its manifest: every stream's file name is a plain file
/// name (it becomes a path in the staging folder), used once; each kind is `globals` or
/// `database` with its database; the roles stream, only when the manifest says so, comes
/// first and once; every database of the manifest (`databases`) comes exactly once.
pub(super) fn check_index(
    index: &Index,
    globals: bool,
    databases: &[&str],
) -> std::result::Result<(), String> {
    let mut files = HashSet::new();
    let mut seen = HashSet::new();
    for (i, s) in index.streams.iter().enumerate() {
        archive::check_file_name(&s.file)?;
        if !files.insert(s.file.as_str()) {
            return Err(format!("stream file {:?} is listed twice", s.file));
        }
        match (s.kind.as_str(), &s.database) {
            ("globals", None) => {
                if !globals {
                    return Err("it holds a roles stream, which the manifest does not list".into());
                }
                if i != 0 {
                    return Err("the roles stream is not the first one".into());
                }
            }
            ("database", Some(db)) => {
                if !databases.contains(&db.as_str()) {
                    return Err(format!(
                        "it holds database {db:?}, which its manifest does not list"
                    ));
                }
                if !seen.insert(db.as_str()) {
                    return Err(format!("database {db:?} is listed twice"));
                }
            }
            (kind, db) => {
                return Err(format!(
                    "stream {:?} is of kind {kind:?} with database {db:?}",
                    s.file
                ))
            }
        }
    }
    if seen.len() != databases.len() {
        return Err(format!(
            "it holds {} of the {} databases of the manifest",
            seen.len(),
            databases.len()
        ));
    }
    Ok(())
}

fn target_of<'a>(plan: &'a Plan, archived: &str) -> Result<&'a Target> {
    plan.targets
        .iter()
        .find(|t| t.stats.name == archived)
        .ok_or_else(|| {
            Error::integrity(format!(
                "the archive holds database {archived:?}, which its manifest does not list"
            ))
        })
}

/// Stage the archive in a temp folder, then restore it with `pg_restore --jobs`.
async fn staged(
    src: &PostgresSource,
    plan: &Plan,
    mut data: BoxRead,
    force: bool,
    jobs: u32,
    created: &mut Created,
    notes: &mut Vec<String>,
) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("drkit-pg-restore-")
        .tempdir()
        .map_err(|e| {
            Error::source_error(format!(
                "cannot create a staging folder in {}: {e}",
                std::env::temp_dir().display()
            ))
        })?;
    let (files, roles) = if plan.tar {
        stage_streams(plan, data, dir.path()).await?
    } else {
        let path = dir.path().join("archive.pgdump");
        let stage_err = stage_error(dir.path());
        let mut f = tokio::fs::File::create(&path).await.map_err(stage_err)?;
        copy_checked(&mut data, &mut f).await?;
        f.sync_all().await.map_err(stage_err)?;
        (vec![(path, plan.targets[0].stats.name.clone())], None)
    };
    // The archive was read to a clean end: restore the roles, then from the staged files.
    if let Some(script) = roles {
        run_globals(src, plan, &script, notes).await?;
    }
    for (path, db) in &files {
        let t = target_of(plan, db)?;
        if !t.exists {
            created.create(t, notes).await?;
        }
        let mut args = pg_restore_args(t, src, force);
        args.push(format!("--jobs={jobs}"));
        args.push(path.display().to_string());
        let mut cmd = src
            .tools
            .command(Tool::PgRestore, &args, t.password.as_deref(), false);
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        let name = format!(
            "pg_restore --jobs {jobs} into database {:?}",
            t.params.dbname()
        );
        Process::spawn(&mut cmd, &name)?.wait_ok().await?;
        created.keep(t.params.dbname());
        let _ = tokio::fs::remove_file(path).await;
    }
    Ok(())
}

/// An archive with the roles, restored without `--jobs` (also in one pass, see
/// docs/postgres.md): its streams are staged in a temp folder until the whole archive was
/// read and checked, then the roles run, then each database is fed from its file into
/// `pg_restore --single-transaction`.
async fn staged_feed(
    src: &PostgresSource,
    plan: &Plan,
    data: BoxRead,
    force: bool,
    created: &mut Created,
    notes: &mut Vec<String>,
) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("drkit-pg-restore-")
        .tempdir()
        .map_err(|e| {
            Error::source_error(format!(
                "cannot create a staging folder in {}: {e}",
                std::env::temp_dir().display()
            ))
        })?;
    let stage_err = stage_error(dir.path());
    let (files, roles) = stage_streams(plan, data, dir.path()).await?;
    if let Some(script) = roles {
        run_globals(src, plan, &script, notes).await?;
    }
    let mut buf = vec![0u8; archive::PART_SIZE];
    for (path, db) in &files {
        let t = target_of(plan, db)?;
        if !t.exists {
            created.create(t, notes).await?;
        }
        let mut feed = Feed::start(src, t, force)?;
        let mut f = tokio::fs::File::open(path).await.map_err(stage_err)?;
        loop {
            let n = archive::fill(&mut f, &mut buf).await.map_err(stage_err)?;
            if n == 0 {
                break;
            }
            feed.push(&buf[..n]).await?;
        }
        let db = feed.finish().await?;
        created.keep(&db);
        let _ = tokio::fs::remove_file(path).await;
    }
    Ok(())
}

/// Why staging in `dir` failed.
fn stage_error(dir: &std::path::Path) -> impl Fn(std::io::Error) -> Error + Copy + '_ {
    move |e| {
        Error::source_error(format!(
            "staging the archive in {}: {e}: set TMPDIR to a folder with room for the whole dump",
            dir.display()
        ))
    }
}

/// Write each database stream of a multi-stream archive to its own file in `dir`. Returns
/// the files with their (archived) databases, and the roles script, read whole.
async fn stage_streams(
    plan: &Plan,
    data: BoxRead,
    dir: &std::path::Path,
) -> Result<(Vec<(std::path::PathBuf, String)>, Option<Vec<u8>>)> {
    let stage_err = stage_error(dir);
    let mut files = Vec::new();
    let mut roles: Option<Vec<u8>> = None;
    let mut tar = TarReader::new(data);
    let index = read_index(&mut tar, plan).await?;
    let mut seq = Sequence::new(&index);
    let mut file: Option<tokio::fs::File> = None;
    while let Some(member) = tar.next().await? {
        let (i, starts) = seq.next(&member.name)?;
        let entry = &index.streams[i];
        if starts {
            if let Some(mut f) = file.take() {
                f.flush().await.map_err(stage_err)?;
            }
            match &entry.database {
                None => roles = Some(Vec::new()),
                Some(db) => {
                    check_pgdmp(plan, db, &member.data)?;
                    // read_index checked the name: one plain component.
                    let path = dir.join(&entry.file);
                    let f = tokio::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&path)
                        .await
                        .map_err(stage_err)?;
                    file = Some(f);
                    files.push((path, db.clone()));
                }
            }
        }
        match file.as_mut() {
            Some(f) => f.write_all(&member.data).await.map_err(stage_err)?,
            None => push_script(
                plan,
                roles.as_mut().expect("the roles stream was started"),
                &member.data,
            )?,
        }
    }
    if let Some(mut f) = file.take() {
        f.flush().await.map_err(stage_err)?;
    }
    if seq.started() != index.streams.len() {
        return Err(Error::integrity(
            "the PostgreSQL archive is missing streams: it is truncated",
        ));
    }
    Ok((files, roles))
}

async fn copy_checked(data: &mut BoxRead, f: &mut tokio::fs::File) -> Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = archive::fill(data, &mut buf).await.map_err(read_error)?;
        if n == 0 {
            return Ok(());
        }
        f.write_all(&buf[..n]).await.map_err(|e| {
            Error::source_error(format!(
                "staging the archive: {e}: set TMPDIR to a folder with room for the whole dump"
            ))
        })?;
    }
}

/// Compare every restored database with the manifest's stats.
async fn check_counts(plan: &Plan) -> Result<()> {
    for t in &plan.targets {
        let client = conn::connect(&t.params, t.password.as_deref()).await?;
        let mut got = Vec::new();
        for table in &t.stats.tables {
            let name = TableName {
                schema: table.schema.clone(),
                name: table.name.clone(),
            };
            let qualified = format!("{}.{}", quote_ident(&name.schema), quote_ident(&name.name));
            let exists: bool = client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&qualified])
                .await
                .map_err(|e| pg_error(&e, &t.params, "checking the restored tables"))?
                .get(0);
            if !exists {
                continue;
            }
            let mut counted = stats::count_rows(
                &client,
                &t.params,
                std::slice::from_ref(&name),
                StatsMode::Exact,
            )
            .await?;
            got.append(&mut counted);
        }
        let lo = match t.stats.large_objects {
            Some(_) => Some(stats::count_large_objects(&client, &t.params).await?),
            None => None,
        };
        let diffs = stats::differences(&t.stats, &got, lo, plan.stats.row_counts);
        if !diffs.is_empty() {
            let more = if diffs.len() > 3 {
                format!(" (and {} more differences)", diffs.len() - 3)
            } else {
                String::new()
            };
            return Err(Error::integrity(format!(
                "restored database {:?} on {} does not match the backup: {}{more}",
                t.params.dbname(),
                t.params.server(),
                diffs.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(streams: &[(&str, &str, Option<&str>)]) -> Index {
        Index::new(
            streams
                .iter()
                .map(|(file, kind, db)| archive::StreamEntry {
                    file: file.to_string(),
                    kind: kind.to_string(),
                    database: db.map(String::from),
                })
                .collect(),
        )
    }

    #[test]
    fn index_checks() {
        let dbs = ["app", "b"];
        let good = index(&[
            ("globals.sql", "globals", None),
            ("db-001-app.pgdump", "database", Some("app")),
            ("db-002-b.pgdump", "database", Some("b")),
        ]);
        assert_eq!(check_index(&good, true, &dbs), Ok(()));
        let cases: Vec<(Index, bool, &str)> = vec![
            (good.clone(), false, "roles stream"),
            (
                index(&[
                    ("/tmp/victim", "database", Some("app")),
                    ("b", "database", Some("b")),
                ]),
                false,
                "staging folder",
            ),
            (
                index(&[
                    ("../../x", "database", Some("app")),
                    ("b", "database", Some("b")),
                ]),
                false,
                "staging folder",
            ),
            (
                index(&[("a", "database", Some("app")), ("a", "database", Some("b"))]),
                false,
                "twice",
            ),
            (
                index(&[
                    ("a", "database", Some("app")),
                    ("b", "database", Some("app")),
                ]),
                false,
                "twice",
            ),
            (
                index(&[("a", "database", Some("app"))]),
                false,
                "1 of the 2",
            ),
            (
                index(&[
                    ("a", "database", Some("app")),
                    ("b", "database", Some("other")),
                ]),
                false,
                "does not list",
            ),
            (
                index(&[
                    ("a", "database", Some("app")),
                    ("g", "globals", None),
                    ("b", "database", Some("b")),
                ]),
                true,
                "not the first",
            ),
            (
                index(&[("a", "database", None), ("b", "database", Some("b"))]),
                true,
                "of kind",
            ),
        ];
        for (ix, globals, want) in cases {
            let e = check_index(&ix, globals, &dbs).unwrap_err();
            assert!(e.contains(want), "{ix:?}: {e}");
        }
    }

    #[test]
    fn manifest_database_names() {
        assert!(check_database_names(["a", "b"].into_iter()).is_ok());
        assert!(check_database_names(["a", "a"].into_iter()).is_err());
        assert!(check_database_names([""].into_iter()).is_err());
        assert!(check_database_names(["a\0b"].into_iter()).is_err());
    }
}
