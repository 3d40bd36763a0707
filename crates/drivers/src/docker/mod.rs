//! The Docker Engine, through its API (bollard): the helper image and containers that read
//! and write volumes through the archive endpoints, volume resolution (by name or compose
//! identity), stopping and restarting the containers that use a volume, volume sizes, and
//! the lookalike-volume checks, and throwaway server containers for restore drills
//! ([`throwaway`]).
//!
//! Nothing here parses `docker` CLI output, and nothing needs an image from a registry: the
//! helper image is imported from an empty tar, and its containers are created but never
//! started (the archive endpoints need no tools inside the container).

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use drkit_core::{Error, ErrorKind, Result};

pub mod containers;
pub mod direct;
pub(crate) mod extract;
pub(crate) mod helper;
pub mod inventory;
pub mod lookalike;
pub(crate) mod tar;
pub mod throwaway;
pub mod volumes;

/// Compose's label naming a container's or volume's project.
pub const LABEL_PROJECT: &str = "com.docker.compose.project";
/// Compose's label naming a volume's key in the compose file.
pub const LABEL_VOLUME: &str = "com.docker.compose.volume";
/// Compose's label naming a container's service.
pub const LABEL_SERVICE: &str = "com.docker.compose.service";

/// A connection to the Docker Engine.
#[derive(Clone)]
pub struct Engine {
    api: Docker,
    /// For long streaming calls (archive uploads): no request timeout.
    streaming: Docker,
    /// Where it connects, for messages.
    pub host: String,
    address: String,
    /// The engine's version, e.g. `20.10.24`.
    pub version: String,
    /// The API version in use, e.g. `1.41`.
    pub api_version: String,
}

impl Engine {
    /// Connect to the engine named by `host`, else `DOCKER_HOST`, else the local socket, and
    /// agree on an API version. A daemon that does not answer is a clear [`ErrorKind::Source`]
    /// error.
    pub async fn connect(host: Option<&str>) -> Result<Engine> {
        let host = host
            .map(str::to_string)
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
        let shown = drkit_core::redact_url(&host);
        let unreachable = |e: &dyn std::fmt::Display| {
            Error::source_error(format!(
                "cannot reach the Docker engine at {shown}: {e}; is the daemon running (systemctl status docker), and is DOCKER_HOST right?"
            ))
        };
        let api = if host.starts_with("unix://") {
            Docker::connect_with_unix(&host, 120, bollard::API_DEFAULT_VERSION)
        } else if host.starts_with("tcp://") || host.starts_with("http://") {
            Docker::connect_with_http(&host, 120, bollard::API_DEFAULT_VERSION)
        } else {
            return Err(Error::config(format!(
                "docker host {shown:?} is not supported: use unix:///path/to/docker.sock or tcp://HOST:PORT"
            )));
        }
        .map_err(|e| unreachable(&e))?;
        let api = api.with_timeout(Duration::from_secs(120));
        let api = api.negotiate_version().await.map_err(|e| unreachable(&e))?;
        let info = api.version().await.map_err(|e| unreachable(&e))?;
        let streaming = api
            .clone()
            .with_timeout(Duration::from_secs(30 * 24 * 3600));
        Ok(Engine {
            version: info.version.unwrap_or_else(|| "unknown".into()),
            api_version: info.api_version.unwrap_or_else(|| "unknown".into()),
            api,
            streaming,
            host: shown,
            address: host,
        })
    }

    /// Run `work` with a fresh connection on a thread of its own and wait for it: for clean-up
    /// in `Drop`, which must finish even while the caller's runtime is shutting down.
    pub fn blocking_cleanup<F, Fut>(&self, work: F)
    where
        F: FnOnce(Engine) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let address = self.address.clone();
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                match Engine::connect(Some(&address)).await {
                    Ok(engine) => work(engine).await,
                    Err(e) => eprintln!(
                        "drkit: clean-up after a failed job could not reach the engine: {e}"
                    ),
                }
            });
        });
        let _ = handle.join();
    }

    /// The bollard client (two-minute request timeout).
    pub fn api(&self) -> &Docker {
        &self.api
    }

    /// The bollard client without a practical timeout, for streaming calls.
    pub fn streaming(&self) -> &Docker {
        &self.streaming
    }

    /// Whether the engine's API is at least `major.minor`.
    pub fn api_at_least(&self, major: u32, minor: u32) -> bool {
        let mut parts = self
            .api_version
            .split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        (a, b) >= (major, minor)
    }
}

/// Turn a bollard error into the library's error, with `what` saying what was being done.
pub fn engine_error(e: bollard::errors::Error, what: impl std::fmt::Display) -> Error {
    use bollard::errors::Error as B;
    match e {
        B::DockerResponseServerError {
            status_code: 404,
            message,
        } => Error::not_found(format!("{what}: {}", one_line(&message))),
        B::DockerResponseServerError {
            status_code,
            message,
        } => Error::source_error(format!(
            "{what}: the Docker engine answered {status_code}: {}",
            one_line(&message)
        )),
        other => {
            let text = one_line(&other.to_string());
            let err = Error::source_error(format!("{what}: {text}"));
            if matches!(
                other,
                B::RequestTimeoutError | B::HyperResponseError { .. } | B::IOError { .. }
            ) {
                err.retryable()
            } else {
                err
            }
        }
    }
}

pub(crate) use drkit_core::one_line;

/// A filter map for list calls: `key` -> values.
pub(crate) fn filters(pairs: &[(&str, String)]) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in pairs {
        out.entry((*k).to_string()).or_default().push(v.clone());
    }
    out
}

/// A volume size in words with drkit's one size formatter (`371.2 MiB`), or `size unknown`
/// when the engine did not say (negative).
pub fn human_size(bytes: i64) -> String {
    match u64::try_from(bytes) {
        Ok(n) => drkit_core::units::human_bytes(n),
        Err(_) => "size unknown".into(),
    }
}

/// The content digest (`stats.digest`) that a backup of the volume archive `tar` records,
/// computed with `algorithm` (`"blake3"`, what backups record now, or `"sha256"`, what they
/// recorded before): for tests of programs built on drkit, e.g. of manifests of older
/// backups.
#[cfg(feature = "test-util")]
pub fn archive_digest(mut tar: impl std::io::Read, algorithm: &str) -> Result<String> {
    let algo = tar::DigestAlgo::of(&format!("{algorithm}:"))
        .ok_or_else(|| Error::config(format!("unknown digest algorithm {algorithm:?}")))?;
    let mut scanner = tar::Scanner::with_digest(tar::Mode::Observe, algo);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = tar
            .read(&mut buf)
            .map_err(|e| drkit_core::from_io(e, ErrorKind::Source, "reading the archive"))?;
        if n == 0 {
            break;
        }
        scanner
            .feed(&buf[..n], None)
            .map_err(|e| Error::integrity(e.to_string()))?;
    }
    Ok(scanner
        .finish()
        .map_err(|e| Error::integrity(e.to_string()))?
        .stats
        .digest)
}

/// Whether an error kind means "the thing is not there".
pub(crate) fn is_not_found(e: &Error) -> bool {
    e.kind() == ErrorKind::NotFound
}
