//! The helper: an image imported from an empty tar, and containers created from it (never
//! started) with one volume mounted, whose archive endpoints read and write the volume.

use std::collections::HashMap;
use std::pin::Pin;

use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountTypeEnum, MountVolumeOptions};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, DownloadFromContainerOptions,
    ListContainersOptions, RemoveContainerOptions, UploadToContainerOptions,
};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};

use super::{engine_error, filters, Engine};
use drkit_core::{Error, Result};

/// The helper image: imported locally from an empty tar, so no registry is needed.
pub const HELPER_IMAGE: &str = "drkit-helper:empty";
/// Label on every helper container.
pub const LABEL_HELPER: &str = "drkit.helper";
const LABEL_PID: &str = "drkit.pid";
const LABEL_HOST: &str = "drkit.host";
/// Where the volume is mounted in a helper container.
pub const MOUNT: &str = "/data";

/// Create the helper image if it is missing (idempotent).
pub async fn ensure_image(engine: &Engine) -> Result<()> {
    match engine.api().inspect_image(HELPER_IMAGE).await {
        Ok(_) => return Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(e) => {
            return Err(engine_error(
                e,
                format!("inspecting the helper image {HELPER_IMAGE}"),
            ))
        }
    }
    let (repo, tag) = HELPER_IMAGE.split_once(':').expect("name:tag");
    let opts = CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(repo.into()),
        tag: Some(tag.into()),
        ..Default::default()
    };
    let empty_tar = Bytes::from(vec![0u8; 1024]);
    let mut progress =
        engine
            .api()
            .create_image(Some(opts), Some(bollard::body_full(empty_tar)), None);
    while let Some(item) = progress.next().await {
        item.map_err(|e| {
            engine_error(
                e,
                format!("importing the helper image {HELPER_IMAGE} from an empty tar"),
            )
        })?;
    }
    Ok(())
}

/// Remove helper containers that a crashed drkit on this host left behind.
pub async fn clean_stale(engine: &Engine) -> Result<Vec<String>> {
    let opts = ListContainersOptions {
        all: true,
        filters: Some(filters(&[("label", LABEL_HELPER.to_string())])),
        ..Default::default()
    };
    let list = engine
        .api()
        .list_containers(Some(opts))
        .await
        .map_err(|e| engine_error(e, "listing drkit helper containers"))?;
    let me = drkit_core::hostname();
    let mut removed = Vec::new();
    for c in list {
        let labels = c.labels.unwrap_or_default();
        let same_host = labels.get(LABEL_HOST).is_some_and(|h| *h == me);
        let dead = labels
            .get(LABEL_PID)
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists());
        if same_host && dead {
            if let Some(id) = c.id {
                let _ = engine
                    .api()
                    .remove_container(
                        &id,
                        Some(RemoveContainerOptions {
                            force: true,
                            ..Default::default()
                        }),
                    )
                    .await;
                removed.push(id);
            }
        }
    }
    Ok(removed)
}

/// A created, never started container with one volume mounted. Removed by
/// [`Helper::remove`], or (best effort) when dropped.
pub struct Helper {
    engine: Engine,
    /// The container id.
    pub id: String,
    /// The mounted volume.
    pub volume: String,
    removed: bool,
}

impl Helper {
    /// Create a helper with `volume` mounted at `target` (read-only when `read_only`). The
    /// volume must exist: the engine would otherwise create it.
    pub async fn create(
        engine: &Engine,
        volume: &str,
        target: &str,
        read_only: bool,
    ) -> Result<Helper> {
        ensure_image(engine).await?;
        let _ = clean_stale(engine).await;
        let mut labels = HashMap::new();
        labels.insert(LABEL_HELPER.to_string(), "1".to_string());
        labels.insert(LABEL_PID.to_string(), std::process::id().to_string());
        labels.insert(LABEL_HOST.to_string(), drkit_core::hostname());
        let body = ContainerCreateBody {
            image: Some(HELPER_IMAGE.into()),
            cmd: Some(vec!["/drkit-helper-is-never-started".into()]),
            labels: Some(labels),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                mounts: Some(vec![Mount {
                    target: Some(target.into()),
                    source: Some(volume.into()),
                    typ: Some(MountTypeEnum::VOLUME),
                    read_only: Some(read_only),
                    volume_options: Some(MountVolumeOptions {
                        no_copy: Some(true),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let name = format!("drkit-helper-{:08x}", rand::random::<u32>());
        // Dropped while the engine creates it (an interrupted job): remove it by name.
        let mut pending = PendingHelper {
            engine: engine.clone(),
            name: name.clone(),
            armed: true,
        };
        let created = engine
            .api()
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| {
                engine_error(
                    e,
                    format!("creating a helper container for volume {volume}"),
                )
            })?;
        pending.armed = false;
        Ok(Helper {
            engine: engine.clone(),
            id: created.id,
            volume: volume.into(),
            removed: false,
        })
    }

    /// The tar of `path` inside the helper as a stream of chunks.
    pub fn download_stream(
        &self,
        path: &str,
    ) -> Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>> {
        let what = format!(
            "reading volume {} through the engine's archive endpoint",
            self.volume
        );
        Box::pin(
            self.engine
                .streaming()
                .download_from_container(
                    &self.id,
                    Some(DownloadFromContainerOptions { path: path.into() }),
                )
                .map_err(move |e| std::io::Error::from(engine_error(e, &what))),
        )
    }

    /// Stream a tar of `path` inside the helper (e.g. `/data/.`: entries named `./...`).
    pub fn download(&self, path: &str) -> ArchiveReader {
        let what = format!(
            "reading volume {} through the engine's archive endpoint",
            self.volume
        );
        let stream = self
            .engine
            .streaming()
            .download_from_container(
                &self.id,
                Some(DownloadFromContainerOptions { path: path.into() }),
            )
            .map_err(move |e| std::io::Error::from(engine_error(e, &what)));
        tokio_util::io::StreamReader::new(Box::pin(stream))
    }

    /// Extract a tar stream at `path` inside the helper.
    pub async fn upload<S>(
        &self,
        path: &str,
        tar: S,
    ) -> std::result::Result<(), bollard::errors::Error>
    where
        S: Stream<Item = std::result::Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let opts = UploadToContainerOptions {
            path: path.into(),
            ..Default::default()
        };
        self.engine
            .streaming()
            .upload_to_container(&self.id, Some(opts), bollard::body_try_stream(tar))
            .await
    }

    /// Remove the helper container (the volume stays).
    pub async fn remove(mut self) -> Result<()> {
        self.removed = true;
        self.engine
            .api()
            .remove_container(
                &self.id,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| engine_error(e, format!("removing helper container {}", self.id)))
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let api = self.engine.api().clone();
        let id = self.id.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = api
                    .remove_container(
                        &id,
                        Some(RemoveContainerOptions {
                            force: true,
                            ..Default::default()
                        }),
                    )
                    .await;
            });
        }
    }
}

/// Removes a helper by name if its creation was abandoned half-way.
struct PendingHelper {
    engine: Engine,
    name: String,
    armed: bool,
}

impl Drop for PendingHelper {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let name = self.name.clone();
        self.engine.blocking_cleanup(move |engine| async move {
            // The engine may still be creating it: retry "not found" for a little while.
            for _ in 0..10 {
                let opts = RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                };
                match engine.api().remove_container(&name, Some(opts)).await {
                    Err(bollard::errors::Error::DockerResponseServerError {
                        status_code: 404,
                        ..
                    }) => {
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                    _ => return,
                }
            }
        });
    }
}

/// The archive stream as an [`AsyncRead`](tokio::io::AsyncRead).
pub type ArchiveReader =
    tokio_util::io::StreamReader<Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>, Bytes>;

/// Read `reader` until the first entry after the root, to tell whether a volume is empty
/// without reading all of it.
pub async fn is_empty(engine: &Engine, volume: &str) -> Result<bool> {
    use tokio::io::AsyncReadExt;
    let helper = Helper::create(engine, volume, MOUNT, true).await?;
    let mut reader = helper.download(&format!("{MOUNT}/."));
    let mut scanner = super::tar::Scanner::new(super::tar::Mode::Observe);
    let mut buf = vec![0u8; 64 * 1024];
    let result = loop {
        let n = match reader.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                break Err(drkit_core::from_io(
                    e,
                    drkit_core::ErrorKind::Source,
                    format!("reading volume {volume}"),
                ))
            }
        };
        if n == 0 {
            break Ok(true);
        }
        if scanner.feed(&buf[..n], None).is_err() {
            break Err(Error::source_error(format!(
                "volume {volume}: the engine sent an unreadable archive"
            )));
        }
        if scanner.entries_seen() > 0 {
            break Ok(false);
        }
    };
    drop(reader);
    helper.remove().await?;
    result
}
