//! `drkit init`: inspect the Docker engine and write the `drkit.toml` that protects its
//! compose deployments (the rules are `drkit_core::init`'s; the facts come from
//! `drkit_drivers::docker::inventory`). The file is written atomically, and never over an
//! existing one unless asked.

use std::path::Path;

use drkit_core::init::{Generated, Options};
use drkit_core::{Error, Result};

/// What `init` is asked to do.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The engine (`unix://...`, `tcp://...`); default `DOCKER_HOST`, else the local socket.
    pub host: Option<&'a str>,
    /// Only this compose project.
    pub project: Option<&'a str>,
    /// The local storage's folder in the file.
    pub storage_path: &'a str,
}

/// Inspect the engine and generate the file (nothing is written).
pub async fn generate(req: &Request<'_>) -> Result<Generated> {
    let inventory = drkit_drivers::docker::inventory::gather(req.host, req.project).await?;
    if let Some(p) = req.project {
        if inventory.projects.is_empty() {
            return Err(Error::config(format!(
                "no compose project named {p:?} on the engine (its containers and volumes carry the label com.docker.compose.project={p})"
            )));
        }
    }
    Ok(drkit_core::init::render(
        &inventory,
        &Options {
            storage_path: req.storage_path.to_string(),
            written_at: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        },
    ))
}

/// Write `text` to `path`: refused (a config error naming `--force`) when the file exists and
/// `force` is not set; atomically (a temp file beside it, then rename), mode 0600 (the file
/// names the variables that hold credentials, and operators add secrets to it).
pub fn write(path: &Path, text: &str, force: bool) -> Result<()> {
    if path.exists() && !force {
        return Err(Error::config(format!(
            "{} exists: drkit init never overwrites a config; use --force, or --dry-run to print the new one",
            path.display()
        )));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let io = |e: std::io::Error| Error::config(format!("cannot write {}: {e}", path.display()));
    let mut tmp = tempfile::Builder::new()
        .prefix(".drkit-init.")
        .tempfile_in(dir)
        .map_err(io)?;
    use std::io::Write;
    tmp.write_all(text.as_bytes()).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}
