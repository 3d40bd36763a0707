//! What every command needs: the library's handle over the loaded config, and how to print.

use std::path::{Path, PathBuf};

use drkit_app::Drkit;
use drkit_core::Result;

use crate::output::Output;

/// The loaded config (through the library's handle) and output settings.
pub struct Ctx {
    /// The handle every command calls.
    pub app: Drkit,
    /// Where the config came from.
    pub config_path: PathBuf,
    /// The `--env-file`s it was read with (a reload reads them again).
    pub env_files: Vec<PathBuf>,
    /// How to print.
    pub out: Output,
    /// `--metrics-file`: where to write the metrics after the command (the daemon: after
    /// every look at the storages).
    pub metrics_file: Option<PathBuf>,
}

impl Ctx {
    /// Find (`--config`, else `$DRKIT_CONFIG`, else `./drkit.toml`), read, interpolate and
    /// validate the config.
    pub fn load(
        config: Option<&Path>,
        env_files: &[PathBuf],
        out: Output,
        metrics_file: Option<PathBuf>,
    ) -> Result<Ctx> {
        let path = config
            .map(Path::to_path_buf)
            .unwrap_or_else(Drkit::default_path);
        let app = Drkit::open(&path, env_files)?;
        Ok(Ctx {
            app,
            config_path: path,
            env_files: env_files.to_vec(),
            out,
            metrics_file,
        })
    }
}

/// Resolves when SIGINT or SIGTERM arrives, with the signal's name.
pub async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
