//! `drkit init`: write a commented `drkit.toml` for the compose deployments the Docker engine
//! runs (`--dry-run` prints it). The rules are the library's (`drkit_app::init`,
//! `drkit_core::init`); this command parses, calls and renders.

use std::path::Path;

use drkit_core::{Exit, Result};

use crate::output::Output;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print the file on stdout instead of writing it.
    #[arg(long)]
    dry_run: bool,
    /// Overwrite an existing config file.
    #[arg(long)]
    force: bool,
    /// Only this compose project.
    #[arg(long, value_name = "NAME")]
    project: Option<String>,
    /// The local storage's folder in the file.
    #[arg(long, value_name = "DIR", default_value = "/var/backups/drkit")]
    storage_path: String,
    /// The Docker engine (default: $DOCKER_HOST, else the local socket).
    #[arg(long, value_name = "URL")]
    host: Option<String>,
}

pub async fn run(path: &Path, out: Output, args: Args) -> Result<Exit> {
    let g = drkit_app::init::generate(&drkit_app::init::Request {
        host: args.host.as_deref(),
        project: args.project.as_deref(),
        storage_path: &args.storage_path,
    })
    .await?;
    for n in &g.notes {
        out.warn(n);
    }
    if args.dry_run {
        out.text(&g.text);
        out.json_doc(&serde_json::json!({
            "text": g.text,
            "jobs": g.jobs,
            "variables": g.variables.iter().map(|(n, what)| serde_json::json!({"name": n, "about": what})).collect::<Vec<_>>(),
            "notes": g.notes,
        }));
        return Ok(Exit::Ok);
    }
    drkit_app::init::write(path, &g.text, args.force)?;
    out.info(format!(
        "drkit init: wrote {} with {} job(s): {}",
        path.display(),
        g.jobs.len(),
        g.jobs.join(", ")
    ));
    if !g.variables.is_empty() {
        let names: Vec<&str> = g.variables.iter().map(|(n, _)| n.as_str()).collect();
        out.info(format!(
            "drkit init: set {} (environment or --env-file), then: drkit doctor && drkit backup",
            names.join(", ")
        ));
    }
    Ok(Exit::Ok)
}
