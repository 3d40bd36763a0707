//! `drkit guard [--max-age 1h] [--backup-first] [--storage NAME]... -- COMMAND [ARGS...]`
//! and `drkit guard --install`.
//!
//! Runs COMMAND unchanged (same exit code and output: the process is replaced by it) unless
//! it destroys Docker volumes (`compose down -v`, `volume rm`, `volume prune`, `system prune
//! --volumes`, `compose rm -v`, `rm -v`, also behind `sudo`, `env`, `nice`, `timeout` ...; what
//! the analysis cannot follow is refused). Then it asks the engine which volumes, and runs the
//! command only when each has a complete backup newer than --max-age that verifies now.
//! Otherwise it refuses (exit 3) and lists each volume with its size and the age of its
//! newest backup, and the command that would back them up. The guard's own messages go to
//! stderr so that the command's stdout stays clean.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use chrono::Utc;
use drkit_core::guard::{analyse, shell_function, Analysis, Context};
use drkit_core::{Error, Result};
use drkit_drivers::docker::guard::{self as engine_guard, Protection};
use drkit_drivers::docker::{human_size, lookalike, Engine};
use serde_json::json;

use crate::ctx::Ctx;
use crate::output::Output;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Newest acceptable age of each volume's backup (90s, 15m, 6h, 7d).
    #[arg(long, default_value = "1h", value_name = "DURATION")]
    pub max_age: String,
    /// Back up the volumes that lack a fresh backup, then run the command.
    #[arg(long)]
    pub backup_first: bool,
    /// Storage for the --backup-first backups of volumes that no job names (repeatable;
    /// default: every storage of the config).
    #[arg(long, value_name = "NAME")]
    pub storage: Vec<String>,
    /// Print a bash/zsh function that routes `docker` and `docker-compose` through the guard.
    #[arg(long, conflicts_with_all = ["backup_first", "command"])]
    pub install: bool,
    /// The command to guard, after `--`.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

/// Run the guard. The config is loaded only when the command destroys volumes.
pub async fn run(
    config: Option<&Path>,
    env_files: &[PathBuf],
    out: Output,
    args: Args,
) -> Result<u8> {
    if args.install {
        let me = std::env::current_exe()
            .ok()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "drkit".into());
        print!("{}", shell_function(&me));
        return Ok(0);
    }
    if args.command.is_empty() {
        return Err(Error::config(
            "drkit guard needs a command: drkit guard -- docker compose down -v (or --install)",
        ));
    }
    let max_age =
        drkit_core::config::parse_duration(&args.max_age).map_err(|e| e.context("--max-age"))?;
    let cwd = std::env::current_dir()
        .map_err(|e| Error::config(format!("cannot read the current directory: {e}")))?;
    let env = |k: &str| std::env::var(k).ok();
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let analysis = analyse(
        &args.command,
        &Context {
            cwd: &cwd,
            env: &env,
            read: &read,
        },
    )?;
    let Some(analysis) = analysis else {
        return exec(&args.command);
    };
    let ctx = Ctx::load(config, env_files, out).map_err(|e| {
        e.context(format!(
            "this command destroys {}, and the guard needs the drkit config to find their backups",
            analysis.summary
        ))
    })?;
    guard(&ctx, &args, &analysis, max_age).await
}

async fn guard(
    ctx: &Ctx,
    args: &Args,
    analysis: &Analysis,
    max_age: std::time::Duration,
) -> Result<u8> {
    let out = &ctx.out;
    let engine = Engine::connect(analysis.docker_host.as_deref()).await?;
    let doomed = engine_guard::resolve(&engine, &analysis.doomed).await?;
    let focus = match &analysis.doomed {
        drkit_core::guard::Doomed::ProjectVolumes { project } => Some(project.as_str()),
        _ => None,
    };
    let warnings = match lookalike::check(&engine, focus).await {
        Ok(w) => w,
        Err(e) => vec![format!("could not check for lookalike volumes: {e}")],
    };
    for w in &warnings {
        out.warn(w);
    }
    if doomed.is_empty() {
        out.info(format!(
            "drkit guard: the command destroys {}: no such volume exists on the engine; running it",
            analysis.summary
        ));
        return exec(&args.command);
    }
    let adhoc = engine_guard::adhoc_storages(&ctx.config, &args.storage)?;
    let now = Utc::now();
    let mut checked = engine_guard::check(&ctx.config, &doomed, &adhoc, max_age, now).await?;
    if args.backup_first && checked.iter().any(|p| p.problem.is_some()) {
        for p in checked.iter().filter(|p| p.problem.is_some()) {
            out.info(format!(
                "drkit guard: backing up volume {} ({}) first ...",
                p.volume.info.name,
                human_size(p.volume.size)
            ));
            let (job, m) = engine_guard::backup_now(&ctx.config, &p.volume.info, &adhoc)
                .await
                .map_err(|e| e.context(format!("--backup-first: the backup of volume {} failed, so the command was not run", p.volume.info.name)))?;
            out.info(format!(
                "drkit guard: volume {}: backup {job}/{} written and verified",
                p.volume.info.name, m.id
            ));
        }
        checked = engine_guard::check(&ctx.config, &doomed, &adhoc, max_age, Utc::now()).await?;
    }
    let rows: Vec<Vec<String>> = checked
        .iter()
        .map(|p| {
            vec![
                p.volume.info.name.clone(),
                human_size(p.volume.size),
                p.age(now),
                p.newest
                    .as_ref()
                    .map(|n| format!("{}/{} on {}", n.job, n.manifest.id, n.storage))
                    .unwrap_or_else(|| "-".into()),
                match &p.problem {
                    None => "ok: verified".into(),
                    Some(why) => why.clone(),
                },
            ]
        })
        .collect();
    let unprotected: Vec<&Protection> = checked.iter().filter(|p| p.problem.is_some()).collect();
    if unprotected.is_empty() {
        out.info(format!(
            "drkit guard: the command destroys {}; each has a verified backup newer than {}:",
            analysis.summary, args.max_age
        ));
        out.info(crate::output::table(
            &["VOLUME", "SIZE", "NEWEST BACKUP", "BACKUP", "STATE"],
            &rows,
        ));
        return exec(&args.command);
    }
    let hint = engine_guard::backup_hint(&unprotected, &args.command);
    eprintln!("drkit guard: REFUSED: the command destroys {}, and not every volume has a verified backup newer than {}:", analysis.summary, args.max_age);
    eprintln!(
        "{}",
        crate::output::table(
            &["VOLUME", "SIZE", "NEWEST BACKUP", "BACKUP", "STATE"],
            &rows
        )
    );
    eprintln!("back them up with: {hint}");
    out.json_doc(&json!({
        "refused": true,
        "destroys": analysis.summary,
        "volumes": checked.iter().map(|p| json!({
            "volume": p.volume.info.name,
            "size": p.volume.size,
            "newest_backup": p.newest.as_ref().map(|n| json!({"job": n.job, "id": n.manifest.id, "storage": n.storage, "finished_at": n.manifest.finished_at})),
            "protected": p.problem.is_none(),
            "problem": p.problem,
        })).collect::<Vec<_>>(),
        "backup_command": hint,
        "warnings": warnings,
    }));
    Err(Error::refused(format!(
        "nothing was run: {} of {} volume(s) lack a verified backup newer than {}; back them up with: {hint}",
        unprotected.len(),
        checked.len(),
        args.max_age
    )))
}

/// Replace this process with the command: same exit code, signals and terminal.
fn exec(command: &[String]) -> Result<u8> {
    let err = std::process::Command::new(&command[0])
        .args(&command[1..])
        .exec();
    Err(Error::external(format!("cannot run {}: {err}", command[0])))
}
