//! `drkit`: back up, verify, restore and guard databases and Docker volumes.
//!
//! Every failure ends in one line on stderr and an exit code (ARCHITECTURE.md, docs/cli.md):
//! 0 ok, 1 operation failed, 2 usage or config error, 3 refused by a safety guard,
//! 4 integrity check failed, 5 stale, missing or suspect backups. Commands return an
//! [`Exit`]; this file alone turns it (or an error) into the process's exit code and prints
//! the error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use drkit_core::{Error, Exit};

mod alloc;
mod cmd;
mod ctx;
mod log;
mod output;
mod render;

/// Backups you have restored before you need them.
#[derive(Parser, Debug)]
#[command(name = "drkit", version, about, propagate_version = true)]
pub struct Cli {
    /// Config file (default: $DRKIT_CONFIG, else ./drkit.toml).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Load KEY=VALUE lines before ${VAR} interpolation (repeatable; later files win, and
    /// they win over the process environment).
    #[arg(long = "env-file", global = true, value_name = "FILE")]
    env_files: Vec<PathBuf>,
    /// Print one JSON document on stdout (logs go to stderr).
    #[arg(long, global = true)]
    json: bool,
    /// More detail on stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// How stderr lines look: text, or one JSON object per line (docs/monitoring.md).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        value_name = "FORMAT"
    )]
    log_format: log::Format,
    /// After the command, write every job's metrics (Prometheus text format) to FILE,
    /// atomically, counters continued from the file there (node_exporter's textfile collector).
    #[arg(long, global = true, value_name = "FILE")]
    metrics_file: Option<PathBuf>,
    /// The age identity file that opens encrypted backups (over each job's
    /// `encryption.identity_file`): restore, drill, verify.
    #[arg(long, global = true, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// When another run holds a job's lock (a backup, a prune, on this host or another),
    /// wait up to DURATION (e.g. 30s, 10m) for it instead of exiting 3 at once.
    #[arg(long, global = true, value_name = "DURATION", default_value = "0", value_parser = parse_wait)]
    wait: std::time::Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Back up jobs (all jobs when none is named).
    Backup(cmd::backup::Args),
    /// List complete backups, newest first.
    List(cmd::list::Args),
    /// Re-read backups from storage and check checksums and structure.
    Verify(cmd::verify::Args),
    /// Restore a backup (the newest, one by --id, or as of --at TIME).
    Restore(cmd::restore::Args),
    /// Apply each job's retention policy (`keep`).
    Prune(cmd::prune::Args),
    /// Mark a suspect backup as good after a deliberate purge (writes accepted.json beside it).
    Accept(cmd::accept::Args),
    /// Give a job's encrypted backups to its current recipients (only the age header changes).
    Rekey(cmd::rekey::Args),
    /// Freshness and health per job; exit 5 when a backup is missing, stale or suspect.
    Status(cmd::status::Args),
    /// Restore the newest backup into a scratch place, check it, clean up, keep a report.
    Drill(cmd::drill::Args),
    /// Pre-flight: config, tools, credentials, reachability, backup health.
    Doctor(cmd::doctor::Args),
    /// Run the schedules until SIGTERM / SIGINT.
    Daemon(cmd::daemon::Args),
    /// Run a docker command unless it destroys volumes that lack a fresh, verified backup.
    Guard(cmd::guard::Args),
    /// Write a drkit.toml for the compose deployments the Docker engine runs.
    Init(cmd::init::Args),
}

/// How long an interrupted drill may take to remove its scratch copy.
const CLEANUP_TIME: std::time::Duration = std::time::Duration::from_secs(60);

/// `--wait`: `0`, or a duration (`90s`, `15m`, ...).
fn parse_wait(s: &str) -> Result<std::time::Duration, String> {
    if s.trim() == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    drkit_core::units::parse_duration(s).map_err(|e| e.to_string())
}

async fn run(cli: Cli) -> Result<Exit, Error> {
    drkit_core::set_lock_wait(cli.wait);
    let out = output::Output::new(cli.json, cli.quiet);
    let command = match cli.command {
        Command::Guard(a) => {
            // The guard loads the config only for commands that destroy volumes.
            let work = cmd::guard::run(cli.config.as_deref(), &cli.env_files, out, a);
            return tokio::select! {
                r = work => r,
                name = ctx::interrupted() => Err(Error::cancelled(format!(
                    "interrupted by {name}: the guarded command was not run"
                ))),
            };
        }
        Command::Init(a) => {
            // No config to load: init writes one.
            let path = cli
                .config
                .clone()
                .unwrap_or_else(drkit_app::Drkit::default_path);
            return cmd::init::run(&path, out, a).await;
        }
        other => other,
    };
    let mut ctx = ctx::Ctx::load(
        cli.config.as_deref(),
        &cli.env_files,
        out,
        cli.metrics_file.clone(),
    )?;
    let is_daemon = matches!(command, Command::Daemon(_));
    // A drill told to stop removes its scratch copy before it returns.
    let cleans_up = matches!(command, Command::Drill(_));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    ctx.app.set_cancel(stopped);
    if let Some(path) = cli.identity.clone() {
        ctx.app.set_identity(path);
    }
    let ctx = ctx;
    let result = run_command(&ctx, command, stop, cleans_up, is_daemon).await;
    if let Some(path) = &ctx.metrics_file {
        if let Err(e) = ctx.app.write_metrics_file(path).await {
            ctx.out.warn(e.to_string());
        }
    }
    result
}

async fn run_command(
    ctx: &ctx::Ctx,
    command: Command,
    stop: tokio::sync::watch::Sender<bool>,
    cleans_up: bool,
    is_daemon: bool,
) -> Result<Exit, Error> {
    let work = async {
        match command {
            Command::Backup(a) => cmd::backup::run(ctx, a).await,
            Command::List(a) => cmd::list::run(ctx, a).await,
            Command::Verify(a) => cmd::verify::run(ctx, a).await,
            Command::Restore(a) => cmd::restore::run(ctx, a).await,
            Command::Prune(a) => cmd::prune::run(ctx, a).await,
            Command::Status(a) => cmd::status::run(ctx, a).await,
            Command::Accept(a) => cmd::accept::run(ctx, a).await,
            Command::Rekey(a) => cmd::rekey::run(ctx, a).await,
            Command::Drill(a) => cmd::drill::run(ctx, a).await,
            Command::Doctor(a) => cmd::doctor::run(ctx, a).await,
            Command::Daemon(a) => cmd::daemon::run(ctx, a).await,
            Command::Guard(_) | Command::Init(_) => unreachable!("handled above"),
        }
    };
    tokio::pin!(work);
    tokio::select! {
        r = &mut work => r,
        name = ctx::interrupted() => {
            if cleans_up {
                let _ = stop.send(true);
                ctx.out.info(format!("{name}: stopping the drill and removing its scratch copy ..."));
                return match tokio::time::timeout(CLEANUP_TIME, work).await {
                    Ok(Err(e)) => Err(e),
                    _ => Err(Error::cancelled(format!(
                        "interrupted by {name}: the drill was stopped"
                    ))),
                };
            }
            if is_daemon {
                // Running backups are cancelled, running drills remove their scratch
                // (drkit_app::daemon bounds that wait).
                let _ = stop.send(true);
                ctx.out.info(format!("daemon: {name}: stopping"));
                let r = work.await;
                ctx.out.info(format!("daemon: stopped by {name}"));
                return r;
            }
            Err(Error::cancelled(format!(
                "interrupted by {name}: nothing was committed by the unfinished operation"
            )))
        }
    }
}

fn main() -> ExitCode {
    alloc::tune();
    let cli = Cli::parse();
    let json = cli.json;
    let timestamps = matches!(cli.command, Command::Daemon(_));
    log::init(cli.log_format, cli.quiet, cli.verbose, timestamps);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let e = Error::new(
                drkit_core::ErrorKind::Source,
                format!("cannot start the async runtime: {e}"),
            );
            output::print_error(&e, json);
            return ExitCode::from(Exit::from(&e).code());
        }
    };
    let result = runtime.block_on(run(cli));
    // Do not wait for blocking work that an interrupted operation left behind.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(e) => {
            output::print_error(&e, json);
            ExitCode::from(Exit::from(&e).code())
        }
    }
}
