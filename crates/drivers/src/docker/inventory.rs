//! What `drkit init` needs to know of the engine: the compose projects (by their labels, as
//! docker-compose 1.x and `docker compose` 2.x both set them), each service's container,
//! image, volume mounts, environment variable *names* and the address this host reaches its
//! database port at, each project's named volumes with their sizes, and the lookalike-volume
//! warnings of [`super::lookalike`]. The file it becomes is `drkit_core::init::render`'s.

use std::collections::BTreeMap;

use bollard::models::{ContainerSummaryStateEnum, MountPointTypeEnum};
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptions};
use drkit_core::init::{Address, Database, Inventory, Mount, Project, Service, Volume};
use drkit_core::Result;

use super::helper::LABEL_HELPER;
use super::{engine_error, filters, lookalike, volumes, Engine, LABEL_PROJECT, LABEL_SERVICE};

/// The inventory of the engine at `host` (else `DOCKER_HOST`, else the local socket);
/// `project`: that compose project only.
pub async fn gather(host: Option<&str>, project: Option<&str>) -> Result<Inventory> {
    let engine = Engine::connect(host).await?;
    let mut filter = vec![("label", LABEL_PROJECT.to_string())];
    if let Some(p) = project {
        filter = vec![("label", format!("{LABEL_PROJECT}={p}"))];
    }
    let list = engine
        .api()
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters(&filter)),
            ..Default::default()
        }))
        .await
        .map_err(|e| engine_error(e, "listing containers"))?;
    let mut projects: BTreeMap<String, Project> = BTreeMap::new();
    for c in list {
        let labels = c.labels.clone().unwrap_or_default();
        if labels.contains_key(LABEL_HELPER) {
            continue;
        }
        let (Some(pname), Some(service)) = (labels.get(LABEL_PROJECT), labels.get(LABEL_SERVICE))
        else {
            continue;
        };
        let container = c
            .names
            .clone()
            .unwrap_or_default()
            .first()
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_default();
        let image = c.image.clone().unwrap_or_default();
        let running = matches!(
            c.state,
            Some(ContainerSummaryStateEnum::RUNNING) | Some(ContainerSummaryStateEnum::RESTARTING)
        );
        let mounts = c
            .mounts
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|m| matches!(m.typ, Some(MountPointTypeEnum::VOLUME)))
            .filter_map(|m| {
                Some(Mount {
                    volume: m.name?,
                    destination: m.destination.unwrap_or_default(),
                    rw: m.rw.unwrap_or(true),
                })
            })
            .collect();
        let db = Database::of_image(&image);
        let (env_names, address) = match db {
            Some(db) => {
                let inspected = engine
                    .api()
                    .inspect_container(&container, None::<InspectContainerOptions>)
                    .await
                    .map_err(|e| engine_error(e, format!("inspecting container {container}")))?;
                // Only the names: values (passwords) are never read into the file.
                let env_names = inspected
                    .config
                    .and_then(|c| c.env)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_string()))
                    .collect();
                (env_names, address(&c, db.port()))
            }
            None => (Vec::new(), None),
        };
        projects
            .entry(pname.clone())
            .or_insert_with(|| Project {
                name: pname.clone(),
                ..Project::default()
            })
            .services
            .push(Service {
                name: service.clone(),
                container,
                image,
                running,
                mounts,
                env_names,
                address,
            });
    }
    let sizes = volumes::sizes(&engine).await.unwrap_or_default();
    for v in volumes::list(&engine, &[]).await? {
        let (Some(p), Some(key)) = (v.project(), v.compose_volume()) else {
            continue;
        };
        if project.is_some_and(|want| want != p) {
            continue;
        }
        projects
            .entry(p.to_string())
            .or_insert_with(|| Project {
                name: p.to_string(),
                ..Project::default()
            })
            .volumes
            .push(Volume {
                name: v.name.clone(),
                key: key.to_string(),
                size: sizes.get(&v.name).and_then(|s| u64::try_from(*s).ok()),
            });
    }
    let mut projects: Vec<Project> = projects.into_values().collect();
    for p in &mut projects {
        p.services
            .sort_by(|a, b| a.name.cmp(&b.name).then(a.container.cmp(&b.container)));
        // One job per service: the first container of a scaled service.
        p.services.dedup_by(|a, b| a.name == b.name);
        p.volumes.sort_by(|a, b| a.key.cmp(&b.key));
    }
    let orphans = lookalike::volumes_of(&engine, project).await?;
    Ok(Inventory {
        engine: engine.host.clone(),
        projects,
        orphans,
    })
}

/// How this host reaches `port` of a container: a port published on the host (loopback
/// when it is bound to all addresses), else the container's address on its first network.
fn address(c: &bollard::models::ContainerSummary, port: u16) -> Option<Address> {
    let published = c.ports.as_ref().and_then(|ports| {
        ports
            .iter()
            .find(|p| p.private_port == port && p.public_port.is_some())
    });
    if let Some(p) = published {
        let ip = p.ip.as_deref().unwrap_or("");
        let host = match ip {
            "" | "0.0.0.0" | "::" => "127.0.0.1".to_string(),
            other => other.to_string(),
        };
        return Some(Address {
            host,
            port: p.public_port?,
            published: true,
        });
    }
    let networks = c.network_settings.as_ref()?.networks.as_ref()?;
    let ip = networks
        .values()
        .filter_map(|n| n.ip_address.clone())
        .find(|ip| !ip.is_empty())?;
    Some(Address {
        host: ip,
        port,
        published: false,
    })
}
