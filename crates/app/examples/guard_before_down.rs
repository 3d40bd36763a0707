//! What a deploy script of the incidents needed, as a program that embeds drkit: before
//! `docker compose down -v`, make sure every volume the command destroys has a fresh,
//! verified backup; back up the ones that do not, then say whether the command may run.
//!
//! ```text
//! cargo run -p drkit-app --example guard_before_down -- drkit.toml 1h docker compose -p shop down -v
//! ```
//!
//! Exit 0: every volume is protected (now), run the command. Exit 3: a volume still is not
//! (its backup failed). Exit 2: bad arguments or config.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use drkit_app::guard::{BackupStep, Context, Options, Verdict};
use drkit_app::Drkit;
use drkit_core::units::parse_duration;
use drkit_core::{Exit, Result};

/// What the check came to: what was unprotected, the verdict after, and the backups written.
pub struct Report {
    /// The volumes the command destroys that had no fresh verified backup at first.
    pub unprotected_before: Vec<String>,
    /// The verdict after backing up what was unprotected (the same when nothing was).
    pub after: Verdict,
    /// `(volume, job, backup id)` of each backup written first.
    pub backed_up: Vec<(String, String, String)>,
}

/// Check `argv` (a docker command line run in `cwd`) against `config`'s backups, backing up
/// first what is not protected within `max_age`.
pub async fn run(config: &Path, max_age: Duration, argv: &[String], cwd: &Path) -> Result<Report> {
    let drkit = Drkit::open(config, &[])?;
    let env = |k: &str| std::env::var(k).ok();
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let world = Context {
        cwd,
        env: &env,
        read: &read,
    };
    let opts = Options {
        max_age,
        storages: Vec::new(),
    };
    let before = drkit
        .guard_check(argv, &world, &opts, chrono::Utc::now())
        .await?;
    let unprotected_before = before
        .unprotected()
        .iter()
        .map(|p| p.volume.info.name.clone())
        .collect();
    let mut backed_up = Vec::new();
    let after = drkit
        .guard_backup_first(before, &mut |step| {
            if let BackupStep::Done {
                volume,
                job,
                manifest,
            } = step
            {
                backed_up.push((
                    volume.info.name.clone(),
                    job.to_string(),
                    manifest.id.clone(),
                ));
            }
        })
        .await?;
    Ok(Report {
        unprotected_before,
        after,
        backed_up,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (exit, message) = match args.as_slice() {
        [config, max_age, argv @ ..] if !argv.is_empty() => {
            let result = async {
                let max_age = parse_duration(max_age)?;
                let cwd = std::env::current_dir().map_err(|e| {
                    drkit_core::Error::config(format!("cannot read the current directory: {e}"))
                })?;
                run(Path::new(config), max_age, argv, &cwd).await
            }
            .await;
            match result {
                Ok(r) => {
                    for (volume, job, id) in &r.backed_up {
                        println!("backed up volume {volume} first: job {job}, backup {id}");
                    }
                    for p in &r.after.volumes {
                        println!(
                            "volume {}: newest verified backup {}",
                            p.volume.info.name,
                            p.age_words()
                        );
                    }
                    if r.after.allowed() {
                        (
                            Exit::Ok,
                            "every volume has a fresh verified backup: run the command".to_string(),
                        )
                    } else {
                        (
                            Exit::Refused,
                            "not every volume is protected: do not run the command".to_string(),
                        )
                    }
                }
                Err(e) => (Exit::from(&e), format!("error: {e}")),
            }
        }
        _ => (
            Exit::Usage,
            "usage: guard_before_down CONFIG MAX_AGE DOCKER-COMMAND...".to_string(),
        ),
    };
    eprintln!("{message}");
    ExitCode::from(exit.code())
}
