//! What every command needs: the loaded config, output settings, and the drivers it names.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use drkit_core::config::parse_env_file;
use drkit_core::pipeline::Target;
use drkit_core::{Config, Error, JobConfig, Result, Source, Storage};

use crate::output::Output;

/// Loaded config and output settings.
pub struct Ctx {
    pub config: Config,
    pub config_path: PathBuf,
    pub out: Output,
}

impl Ctx {
    /// Find, read, interpolate and validate the config.
    pub fn load(config: Option<&Path>, env_files: &[PathBuf], out: Output) -> Result<Ctx> {
        let path = match config {
            Some(p) => p.to_path_buf(),
            None => match std::env::var_os("DRKIT_CONFIG") {
                Some(p) if !p.is_empty() => PathBuf::from(p),
                _ => PathBuf::from("drkit.toml"),
            },
        };
        let mut vars: HashMap<String, String> = HashMap::new();
        for file in env_files {
            let text = std::fs::read_to_string(file).map_err(|e| {
                Error::config(format!("cannot read env file {}: {e}", file.display()))
            })?;
            vars.extend(parse_env_file(&text, &file.display().to_string())?);
        }
        let lookup = |name: &str| vars.get(name).cloned().or_else(|| std::env::var(name).ok());
        let config = Config::load(&path, &lookup)?;
        drkit_drivers::validate(&config)?;
        Ok(Ctx {
            config,
            config_path: path,
            out,
        })
    }

    /// The jobs named, or all jobs (in name order) when none is.
    pub fn jobs(&self, names: &[String]) -> Result<Vec<(String, &JobConfig)>> {
        if names.is_empty() {
            if self.config.job.is_empty() {
                return Err(Error::config(format!(
                    "{} defines no [job.NAME]: add one (see examples/)",
                    self.config_path.display()
                )));
            }
            return Ok(self
                .config
                .job
                .iter()
                .map(|(n, j)| (n.clone(), j))
                .collect());
        }
        names
            .iter()
            .map(|n| Ok((n.clone(), self.config.job(n)?)))
            .collect()
    }

    /// The source of a job.
    pub fn source(&self, job: &str) -> Result<Box<dyn Source>> {
        drkit_drivers::open_source(job, &self.config.job(job)?.source)
    }

    /// The storages of a job, in the job's order.
    pub fn targets(&self, job: &JobConfig) -> Result<Vec<Target>> {
        job.storage
            .iter()
            .map(|name| {
                Ok(Target {
                    name: name.clone(),
                    storage: self.storage(name)?,
                })
            })
            .collect()
    }

    /// What the job's readers trust (its signing public key, or nothing).
    pub fn trust(&self, job: &str) -> Result<drkit_core::signing::Trust> {
        self.config.job(job)?.trust(job)
    }

    /// The job's signer, when this host has its key file.
    pub fn signer(&self, job: &str) -> Result<Option<Arc<drkit_core::signing::Signer>>> {
        Ok(self.config.job(job)?.signer(job)?.map(Arc::new))
    }

    /// One storage by name.
    pub fn storage(&self, name: &str) -> Result<Arc<dyn Storage>> {
        let spec = self
            .config
            .storage
            .get(name)
            .ok_or_else(|| Error::config(format!("storage {name:?} is not defined")))?;
        drkit_drivers::open_storage(name, spec)
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
