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
//!
//! The rules are `drkit_app::guard`'s; this file parses, calls and renders.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use chrono::Utc;
use drkit_app::guard::{self, analyse, shell_function, BackupStep, Context, Options, Verdict};
use drkit_core::{Error, Exit, Result};
use serde_json::json;

use crate::ctx::Ctx;
use crate::output::{table, Output};

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
) -> Result<Exit> {
    if args.install {
        let me = std::env::current_exe()
            .ok()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "drkit".into());
        out.script(&shell_function(&me));
        return Ok(Exit::Ok);
    }
    if args.command.is_empty() {
        return Err(Error::config(
            "drkit guard needs a command: drkit guard -- docker compose down -v (or --install)",
        ));
    }
    let max_age =
        drkit_core::units::parse_duration(&args.max_age).map_err(|e| e.context("--max-age"))?;
    let cwd = std::env::current_dir()
        .map_err(|e| Error::config(format!("cannot read the current directory: {e}")))?;
    let env = |k: &str| std::env::var(k).ok();
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let world = Context {
        cwd: &cwd,
        env: &env,
        read: &read,
    };
    let Some(analysis) = analyse(&args.command, &world)? else {
        return exec(&args.command);
    };
    let ctx = Ctx::load(config, env_files, out, None).map_err(|e| {
        e.context(format!(
            "this command destroys {}, and the guard needs the drkit config to find their backups",
            analysis.summary
        ))
    })?;
    let opts = Options {
        max_age,
        storages: args.storage.clone(),
    };
    let survey = guard::survey(analysis).await?;
    for w in &survey.warnings {
        out.warn(w);
    }
    if survey.volumes.is_empty() {
        out.info(format!(
            "drkit guard: the command destroys {}: no such volume exists on the engine; running it",
            survey.analysis.summary
        ));
        return exec(&args.command);
    }
    let mut verdict = guard::assess(ctx.app.config(), survey, &opts, Utc::now()).await?;
    if args.backup_first {
        verdict = backup_first(&ctx, verdict).await?;
    }
    let summary = verdict.analysis.as_ref().map_or("", |a| a.summary.as_str());
    let rows = table(
        &["VOLUME", "SIZE", "NEWEST BACKUP", "BACKUP", "STATE"],
        &rows(&verdict),
    );
    let Some(hint) = verdict.backup_hint(&args.command) else {
        out.info(format!(
            "drkit guard: the command destroys {summary}; each has a verified backup newer than {}:",
            args.max_age
        ));
        out.info(rows);
        return exec(&args.command);
    };
    out.refusal(&[
        format!("drkit guard: REFUSED: the command destroys {summary}, and not every volume has a verified backup newer than {}:", args.max_age),
        rows,
        format!("back them up with: {hint}"),
    ]);
    out.json_doc(&refusal_json(&verdict, summary, &hint));
    let unprotected: Vec<&str> = verdict
        .unprotected()
        .iter()
        .map(|p| p.volume.info.name.as_str())
        .collect();
    ctx.app
        .report_refusal(&format!(
            "drkit guard refused `{}`: it destroys {summary}, and {} lack a verified backup newer than {}; back them up with: {hint}",
            args.command.join(" "),
            unprotected.join(", "),
            args.max_age
        ))
        .await;
    Err(Error::refused(format!(
        "nothing was run: {} of {} volume(s) lack a verified backup newer than {}; back them up with: {hint}",
        verdict.unprotected().len(),
        verdict.volumes.len(),
        args.max_age
    )))
}

/// `--backup-first`: back up the unprotected volumes, saying so, and decide again.
async fn backup_first(ctx: &Ctx, verdict: Verdict) -> Result<Verdict> {
    let out = ctx.out;
    let mut backing_up = false;
    let mut show = |step: BackupStep<'_>| match step {
        BackupStep::Starting(v) => {
            backing_up = true;
            out.info(format!(
                "drkit guard: backing up volume {} ({}) first ...",
                v.info.name,
                v.size_words()
            ));
        }
        BackupStep::Done {
            volume,
            job,
            manifest,
        } => {
            backing_up = false;
            out.info(format!(
                "drkit guard: volume {}: backup {job}/{} written and verified",
                volume.info.name, manifest.id
            ));
        }
    };
    let result = ctx.app.guard_backup_first(verdict, &mut show).await;
    result.map_err(|e| {
        if backing_up {
            e.context("--backup-first")
        } else {
            e
        }
    })
}

/// One table row per volume: name, size, age of the newest backup, which one, state.
fn rows(verdict: &Verdict) -> Vec<Vec<String>> {
    verdict
        .volumes
        .iter()
        .map(|p| {
            vec![
                p.volume.info.name.clone(),
                p.volume.size_words(),
                p.age_words(),
                p.newest
                    .as_ref()
                    .map(|n| format!("{}/{} on {}", n.job, n.manifest.id, n.storage))
                    .unwrap_or_else(|| "-".into()),
                match &p.problem {
                    // A dump of the database server whose data the volume holds (the job
                    // `covers` the volume): the consistent backup of that data.
                    None if p.newest.as_ref().is_some_and(|n| n.dump) => {
                        "ok: verified dump of the server whose data it holds".into()
                    }
                    None => "ok: verified".into(),
                    Some(why) => why.to_string(),
                },
            ]
        })
        .collect()
}

/// The --json document of a refusal.
fn refusal_json(verdict: &Verdict, summary: &str, hint: &str) -> serde_json::Value {
    json!({
        "refused": true,
        "destroys": summary,
        "volumes": verdict.volumes.iter().map(|p| json!({
            "volume": p.volume.info.name,
            "size": p.volume.size.map_or(-1, |s| i64::try_from(s).unwrap_or(i64::MAX)),
            "newest_backup": p.newest.as_ref().map(|n| json!({"job": n.job, "dump": n.dump, "id": n.manifest.id, "storage": n.storage, "finished_at": n.manifest.finished_at})),
            "protected": p.protected(),
            "problem": p.problem.as_ref().map(ToString::to_string),
        })).collect::<Vec<_>>(),
        "backup_command": hint,
        "warnings": verdict.warnings,
    })
}

/// Replace this process with the command: same exit code, signals and terminal.
fn exec(command: &[String]) -> Result<Exit> {
    let err = std::process::Command::new(&command[0])
        .args(&command[1..])
        .exec();
    Err(Error::external(format!("cannot run {}: {err}", command[0])))
}
