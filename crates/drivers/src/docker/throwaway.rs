//! Throwaway server containers (restore drills into `image = "..."`): a container of an
//! image, on a private network of its own that drkit creates, with its data in an anonymous
//! volume, reached from the host at the container's address on that network. Removed with
//! its volumes and its network afterwards ([`Throwaway::remove`]); both carry a label whose
//! value names them, so that a later run can find and remove what a killed one left
//! ([`sweep`]).
//!
//! Generic: nothing here knows which server runs in the container; the driver waits for it
//! to answer ([`Throwaway::running`] and [`Throwaway::last_logs`] tell it when the container
//! died instead).

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, ListContainersOptions,
    ListNetworksOptions, LogsOptions, RemoveContainerOptions, StartContainerOptions,
};
use futures::StreamExt;

use super::{engine_error, filters, Engine};
use drkit_core::{Error, Result};

/// What to start.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The name of the container and of its network (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`).
    pub name: String,
    /// The image (pulled when the engine does not have it).
    pub image: String,
    /// `KEY=value` environment entries (may hold secrets: never shown).
    pub env: Vec<String>,
    /// A folder inside the container kept in an anonymous volume (removed with it).
    pub data_dir: Option<String>,
    /// The label (key, value) on the container and its network, for [`sweep`].
    pub label: (String, String),
}

/// A started throwaway container and its network.
#[derive(Debug, Clone)]
pub struct Throwaway {
    /// The container's id.
    pub container: String,
    /// The network's id.
    pub network: String,
    /// The container's and the network's name.
    pub name: String,
    /// The container's IPv4 address on its network.
    pub address: String,
}

/// Whether `name` is a container or network name the engine accepts.
fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Make sure the engine has `image`: inspect it, else pull it (the engine's own registry
/// settings apply).
async fn ensure_image(engine: &Engine, image: &str) -> Result<()> {
    match engine.api().inspect_image(image).await {
        Ok(_) => return Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(e) => return Err(engine_error(e, format!("inspecting image {image}"))),
    }
    let opts = CreateImageOptions {
        from_image: Some(image.to_string()),
        ..Default::default()
    };
    let mut progress = engine.api().create_image(Some(opts), None, None);
    while let Some(item) = progress.next().await {
        item.map_err(|e| {
            Error::config(format!(
                "image {image} is not on the Docker engine at {} and pulling it failed ({}): pull or build it there first",
                engine.host,
                engine_error(e, "pull").message().trim_start_matches("pull: ")
            ))
        })?;
    }
    Ok(())
}

impl Throwaway {
    /// Create the network, then the container on it, and start it. Whatever was made is
    /// removed again when a later step fails.
    pub async fn start(engine: &Engine, spec: &Spec) -> Result<Throwaway> {
        if !valid_name(&spec.name) {
            return Err(Error::config(format!(
                "{:?} is not a container name",
                spec.name
            )));
        }
        ensure_image(engine, &spec.image).await?;
        let labels: HashMap<String, String> = [spec.label.clone()].into_iter().collect();
        let network = engine
            .api()
            .create_network(NetworkCreateRequest {
                name: spec.name.clone(),
                driver: Some("bridge".into()),
                // No way out: the host reaches the container on the bridge, nothing else does.
                internal: Some(true),
                labels: Some(labels.clone()),
                ..Default::default()
            })
            .await
            .map_err(|e| engine_error(e, format!("creating network {}", spec.name)))?
            .id;
        let mut made = Throwaway {
            container: String::new(),
            network,
            name: spec.name.clone(),
            address: String::new(),
        };
        match made.create_and_start(engine, spec, labels).await {
            Ok(()) => Ok(made),
            Err(e) => {
                let _ = made.remove(engine).await;
                Err(e)
            }
        }
    }

    async fn create_and_start(
        &mut self,
        engine: &Engine,
        spec: &Spec,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        let volumes = spec
            .data_dir
            .as_ref()
            .map(|d| [(d.clone(), HashMap::new())].into_iter().collect());
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(spec.env.clone()),
            labels: Some(labels),
            volumes,
            host_config: Some(HostConfig {
                network_mode: Some(spec.name.clone()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = engine
            .api()
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(spec.name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| {
                engine_error(
                    e,
                    format!("creating container {} of image {}", spec.name, spec.image),
                )
            })?;
        self.container = created.id;
        engine
            .api()
            .start_container(&self.container, None::<StartContainerOptions>)
            .await
            .map_err(|e| engine_error(e, format!("starting container {}", spec.name)))?;
        let inspect = engine
            .api()
            .inspect_container(&self.container, None::<InspectContainerOptions>)
            .await
            .map_err(|e| engine_error(e, format!("inspecting container {}", spec.name)))?;
        self.address = inspect
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(&spec.name))
            .and_then(|n| n.ip_address)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                Error::source_error(format!(
                    "container {} has no address on its network {}",
                    spec.name, spec.name
                ))
            })?;
        Ok(())
    }

    /// Whether the container still runs (`false` once it exited or is gone).
    pub async fn running(&self, engine: &Engine) -> bool {
        engine
            .api()
            .inspect_container(&self.container, None::<InspectContainerOptions>)
            .await
            .ok()
            .and_then(|c| c.state)
            .and_then(|s| s.running)
            .unwrap_or(false)
    }

    /// The last `lines` lines the container printed (stdout and stderr), or why they
    /// could not be read.
    pub async fn last_logs(&self, engine: &Engine, lines: usize) -> String {
        let opts = LogsOptions {
            stdout: true,
            stderr: true,
            tail: lines.to_string(),
            ..Default::default()
        };
        let mut out = String::new();
        let mut logs = engine.api().logs(&self.container, Some(opts));
        while let Some(item) = logs.next().await {
            match item {
                Ok(chunk) => out.push_str(&String::from_utf8_lossy(&chunk.into_bytes())),
                Err(e) => {
                    out.push_str(&format!(
                        "(reading its log failed: {})",
                        super::one_line(&e.to_string())
                    ));
                    break;
                }
            }
            if out.len() > 64 * 1024 {
                break;
            }
        }
        out
    }

    /// Remove the container (forced, with its anonymous volumes) and then its network.
    /// Things already gone are fine.
    pub async fn remove(&self, engine: &Engine) -> Result<()> {
        remove_parts(engine, &self.container, &self.network, &self.name).await
    }
}

/// Remove a container (forced, with its anonymous volumes) and a network, by id or name;
/// empty ids are skipped, and things already gone are fine.
pub async fn remove_parts(
    engine: &Engine,
    container: &str,
    network: &str,
    name: &str,
) -> Result<()> {
    let gone = |e: &bollard::errors::Error| {
        matches!(
            e,
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                ..
            }
        )
    };
    if !container.is_empty() {
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match engine.api().remove_container(container, Some(opts)).await {
            Err(e) if !gone(&e) => {
                return Err(engine_error(e, format!("removing container {name}")))
            }
            _ => {}
        }
    }
    if !network.is_empty() {
        match engine.api().remove_network(network).await {
            Err(e) if !gone(&e) => return Err(engine_error(e, format!("removing network {name}"))),
            _ => {}
        }
    }
    Ok(())
}

/// Remove the containers (with their anonymous volumes) and networks labelled `label`
/// whose label value `stale` says is left over. Returns the label values removed, each once.
pub async fn sweep(
    engine: &Engine,
    label: &str,
    stale: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Vec<String>> {
    let mut removed: Vec<String> = Vec::new();
    let containers = engine
        .api()
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters(&[("label", label.to_string())])),
            ..Default::default()
        }))
        .await
        .map_err(|e| engine_error(e, format!("listing containers labelled {label}")))?;
    for c in containers {
        let value = c
            .labels
            .unwrap_or_default()
            .remove(label)
            .unwrap_or_default();
        let Some(id) = c.id.filter(|_| stale(&value)) else {
            continue;
        };
        remove_parts(engine, &id, "", &value).await?;
        if !removed.contains(&value) {
            removed.push(value);
        }
    }
    let networks = engine
        .api()
        .list_networks(Some(ListNetworksOptions {
            filters: Some(filters(&[("label", label.to_string())])),
        }))
        .await
        .map_err(|e| engine_error(e, format!("listing networks labelled {label}")))?;
    for n in networks {
        let value = n
            .labels
            .unwrap_or_default()
            .remove(label)
            .unwrap_or_default();
        let Some(id) = n.id.filter(|_| stale(&value)) else {
            continue;
        };
        remove_parts(engine, "", &id, &value).await?;
        if !removed.contains(&value) {
            removed.push(value);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("drkit-drill-app-20261203T040506-000000ab"));
        assert!(!valid_name(""));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("a b"));
    }
}
