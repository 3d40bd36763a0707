//! Volumes: inspect, resolve by name or compose identity, list, sizes, create, users.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{ContainerSummaryStateEnum, VolumeCreateOptions};
use bollard::query_parameters::{DataUsageOptions, ListContainersOptions, ListVolumesOptions};
use chrono::{DateTime, Utc};
use drkit_core::{Error, Result};

use super::helper::LABEL_HELPER;
use super::{engine_error, filters, Engine, LABEL_PROJECT, LABEL_SERVICE, LABEL_VOLUME};

/// What drkit needs to know of one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// The volume's name.
    pub name: String,
    /// Its driver (`local`).
    pub driver: String,
    /// Driver options.
    pub options: BTreeMap<String, String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Creation time, when the engine reports it.
    pub created: Option<DateTime<Utc>>,
}

impl VolumeInfo {
    /// The compose project it belongs to, from its labels.
    pub fn project(&self) -> Option<&str> {
        self.labels.get(LABEL_PROJECT).map(String::as_str)
    }
    /// Its key in the compose file, from its labels.
    pub fn compose_volume(&self) -> Option<&str> {
        self.labels.get(LABEL_VOLUME).map(String::as_str)
    }
    /// Whether the engine named it (an anonymous volume: 64 hex digits, no compose key).
    pub fn is_anonymous(&self) -> bool {
        self.compose_volume().is_none()
            && self.name.len() == 64
            && self.name.bytes().all(|b| b.is_ascii_hexdigit())
    }

    fn from_model(v: bollard::models::Volume) -> VolumeInfo {
        VolumeInfo {
            name: v.name,
            driver: v.driver,
            options: v.options.into_iter().collect(),
            labels: v.labels.into_iter().collect(),
            created: v
                .created_at
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc)),
        }
    }
}

/// Inspect a volume by name. A missing one is a clear [`drkit_core::ErrorKind::NotFound`].
pub async fn inspect(engine: &Engine, name: &str) -> Result<VolumeInfo> {
    match engine.api().inspect_volume(name).await {
        Ok(v) => Ok(VolumeInfo::from_model(v)),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Err(Error::not_found(format!(
            "docker volume {name:?} does not exist on the engine at {} (`docker volume ls` lists the volumes)",
            engine.host
        ))),
        Err(e) => Err(engine_error(e, format!("inspecting volume {name}"))),
    }
}

/// Whether a volume exists.
pub async fn exists(engine: &Engine, name: &str) -> Result<bool> {
    match inspect(engine, name).await {
        Ok(_) => Ok(true),
        Err(e) if super::is_not_found(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Every volume, optionally filtered (engine filter syntax: `label=k=v`, `dangling=true`).
pub async fn list(engine: &Engine, filter: &[(&str, String)]) -> Result<Vec<VolumeInfo>> {
    let opts = ListVolumesOptions {
        filters: if filter.is_empty() {
            None
        } else {
            Some(filters(filter))
        },
    };
    let resp = engine
        .api()
        .list_volumes(Some(opts))
        .await
        .map_err(|e| engine_error(e, "listing volumes"))?;
    let mut out: Vec<VolumeInfo> = resp
        .volumes
        .unwrap_or_default()
        .into_iter()
        .map(VolumeInfo::from_model)
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The volume of compose project `project` declared as `volume` in its compose file, found
/// by compose's labels. None or several is a clear error, naming lookalikes in other
/// projects when there are some.
pub async fn resolve_compose(engine: &Engine, project: &str, volume: &str) -> Result<VolumeInfo> {
    let found = list(
        engine,
        &[
            ("label", format!("{LABEL_PROJECT}={project}")),
            ("label", format!("{LABEL_VOLUME}={volume}")),
        ],
    )
    .await?;
    match found.len() {
        1 => Ok(found.into_iter().next().expect("one")),
        0 => {
            let others = list(engine, &[("label", format!("{LABEL_VOLUME}={volume}"))]).await?;
            let hint = if others.is_empty() {
                String::new()
            } else {
                let names: Vec<String> = others
                    .iter()
                    .map(|v| format!("{} (project {})", v.name, v.project().unwrap_or("?")))
                    .collect();
                format!(
                    "; volumes with that compose name in other projects: {}",
                    names.join(", ")
                )
            };
            Err(Error::not_found(format!(
                "compose project {project:?} has no volume {volume:?} on the engine at {} (it is created by `docker compose up`){hint}",
                engine.host
            )))
        }
        _ => {
            let names: Vec<&str> = found.iter().map(|v| v.name.as_str()).collect();
            Err(Error::config(format!(
                "compose project {project:?} has several volumes labelled {volume:?}: {}; name the volume with `volume = \"NAME\"` and no `project`",
                names.join(", ")
            )))
        }
    }
}

/// Sizes of all volumes in bytes, as the engine computes them (`/system/df`); `-1` where the
/// engine cannot tell (non-local drivers).
pub async fn sizes(engine: &Engine) -> Result<HashMap<String, i64>> {
    // The engine runs one disk-usage computation at a time and refuses a second one
    // ("a disk usage operation is already running"): wait and ask again.
    let mut attempt = 0;
    let df = loop {
        match engine.api().df(None::<DataUsageOptions>).await {
            Ok(df) => break df,
            Err(bollard::errors::Error::DockerResponseServerError { message, .. })
                if message.contains("already running") && attempt < 50 =>
            {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => return Err(engine_error(e, "asking the engine for volume sizes")),
        }
    };
    Ok(df
        .volumes
        .unwrap_or_default()
        .into_iter()
        .map(|v| (v.name, v.usage_data.map(|u| u.size).unwrap_or(-1)))
        .collect())
}

/// Create a volume.
pub async fn create(
    engine: &Engine,
    name: &str,
    driver: &str,
    options: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> Result<VolumeInfo> {
    let body = VolumeCreateOptions {
        name: Some(name.into()),
        driver: Some(driver.into()),
        driver_opts: Some(options.clone().into_iter().collect()),
        labels: Some(labels.clone().into_iter().collect()),
        ..Default::default()
    };
    let v = engine
        .api()
        .create_volume(body)
        .await
        .map_err(|e| engine_error(e, format!("creating volume {name}")))?;
    Ok(VolumeInfo::from_model(v))
}

/// Remove a volume.
pub async fn remove(engine: &Engine, name: &str) -> Result<()> {
    engine
        .api()
        .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
        .await
        .map_err(|e| engine_error(e, format!("removing volume {name}")))
}

/// A container, as far as drkit cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    /// Its id.
    pub id: String,
    /// Its name, without the leading `/`.
    pub name: String,
    /// Whether it is running.
    pub running: bool,
    /// Its compose project, when it has one.
    pub project: Option<String>,
    /// Its compose service, when it has one.
    pub service: Option<String>,
    /// The volumes it mounts.
    pub volumes: Vec<String>,
}

/// Containers (running or not), optionally filtered; drkit's own helpers are left out.
pub async fn containers(engine: &Engine, filter: &[(&str, String)]) -> Result<Vec<ContainerRef>> {
    let opts = ListContainersOptions {
        all: true,
        filters: if filter.is_empty() {
            None
        } else {
            Some(filters(filter))
        },
        ..Default::default()
    };
    let list = engine
        .api()
        .list_containers(Some(opts))
        .await
        .map_err(|e| engine_error(e, "listing containers"))?;
    let mut out = Vec::new();
    for c in list {
        let labels = c.labels.unwrap_or_default();
        if labels.contains_key(LABEL_HELPER) {
            continue;
        }
        let name = c
            .names
            .unwrap_or_default()
            .first()
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_default();
        let volumes = c
            .mounts
            .unwrap_or_default()
            .into_iter()
            .filter(|m| matches!(m.typ, Some(bollard::models::MountPointTypeEnum::VOLUME)))
            .filter_map(|m| m.name)
            .collect();
        out.push(ContainerRef {
            id: c.id.unwrap_or_default(),
            name,
            running: matches!(
                c.state,
                Some(ContainerSummaryStateEnum::RUNNING)
                    | Some(ContainerSummaryStateEnum::RESTARTING)
            ),
            project: labels.get(LABEL_PROJECT).cloned(),
            service: labels.get(LABEL_SERVICE).cloned(),
            volumes,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The containers (running or not) that mount `volume`.
pub async fn users(engine: &Engine, volume: &str) -> Result<Vec<ContainerRef>> {
    containers(engine, &[("volume", volume.to_string())]).await
}

/// The names among `names` of anonymous volumes (named by the engine). A name that does not
/// exist, or cannot be inspected, is left out.
pub async fn anonymous_among(engine: &Engine, names: Vec<String>) -> Vec<String> {
    let mut kept = Vec::new();
    for n in names {
        if inspect(engine, &n).await.is_ok_and(|v| v.is_anonymous()) {
            kept.push(n);
        }
    }
    kept
}

/// The volumes `compose down --volumes` removes for compose project `project`: the named
/// volumes of the project (found by compose's labels) and the anonymous volumes of its
/// containers, not external volumes that other projects own.
pub async fn compose_down_volumes(engine: &Engine, project: &str) -> Result<Vec<String>> {
    let filter = [("label", format!("{LABEL_PROJECT}={project}"))];
    let mut names: Vec<String> = list(engine, &filter)
        .await?
        .into_iter()
        .map(|v| v.name)
        .collect();
    for c in containers(engine, &filter).await? {
        names.extend(c.volumes);
    }
    let mut kept = Vec::new();
    for n in names {
        if let Ok(v) = inspect(engine, &n).await {
            if v.project() == Some(project) || v.is_anonymous() {
                kept.push(n);
            }
        }
    }
    Ok(kept)
}

/// The volumes `compose rm --volumes` removes for compose project `project`: the anonymous
/// volumes of its stopped containers (and of running ones too with `running_too`), of the
/// services in `services` (all when empty).
pub async fn compose_rm_volumes(
    engine: &Engine,
    project: &str,
    services: &[String],
    running_too: bool,
) -> Result<Vec<String>> {
    // The services are a union: filtered here, not by the engine (whose label filters are
    // ANDed).
    let filter = [("label", format!("{LABEL_PROJECT}={project}"))];
    let mut names = Vec::new();
    for c in containers(engine, &filter).await? {
        if (running_too || !c.running)
            && (services.is_empty() || c.service.as_ref().is_some_and(|s| services.contains(s)))
        {
            names.extend(c.volumes);
        }
    }
    Ok(anonymous_among(engine, names).await)
}

/// The volumes a volume prune would remove: the unused (dangling) ones matching `filter`
/// (engine filter pairs, e.g. `("label", "k=v")`). From API 1.42 on the engine prunes only
/// anonymous volumes unless `all`; before, named ones too.
pub async fn prune_candidates(
    engine: &Engine,
    all: bool,
    filter: &[(&str, String)],
) -> Result<Vec<String>> {
    let mut f: Vec<(&str, String)> = vec![("dangling", "true".to_string())];
    f.extend(filter.iter().cloned());
    let only_anonymous = !all && engine.api_at_least(1, 42);
    Ok(list(engine, &f)
        .await?
        .into_iter()
        .filter(|v| {
            !only_anonymous
                || v.labels.contains_key("com.docker.volume.anonymous")
                || v.is_anonymous()
        })
        .map(|v| v.name)
        .collect())
}
