//! Lookalikes: the symptoms of a changed compose project name.
//!
//! - A volume with the same compose volume name exists under another project and holds more
//!   data than the one in use (`copilotos_mongodb_data`, 371 MB, next to a fresh, empty
//!   `copilotos-prod_mongodb_data`).
//! - One compose service has running containers of different projects (`app-backend-1` and
//!   `miracollo-backend-1`, and the proxy reaches the wrong one).
//!
//! The rules are pure functions of facts gathered from the engine ([`check`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use drkit_core::Result;

use super::{human_size, volumes, Engine};

/// What the rules need to know of one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeFact {
    /// Volume name.
    pub name: String,
    /// Compose project label.
    pub project: Option<String>,
    /// Compose volume label.
    pub compose_volume: Option<String>,
    /// Size in bytes (-1 unknown).
    pub size: i64,
    /// Creation time.
    pub created: Option<DateTime<Utc>>,
    /// Mounted by a running container, or about to be destroyed (the guard's focus).
    pub in_use: bool,
}

/// What the rules need to know of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerFact {
    /// Container name.
    pub name: String,
    /// Compose project label.
    pub project: Option<String>,
    /// Compose service label.
    pub service: Option<String>,
    /// Whether it runs.
    pub running: bool,
}

fn when(t: &Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| "unknown time".into())
}

/// Volumes in use that have a same-named compose volume in another project holding more data.
pub fn lookalike_volumes(vols: &[VolumeFact]) -> Vec<String> {
    let mut by_key: BTreeMap<&str, Vec<&VolumeFact>> = BTreeMap::new();
    for v in vols {
        if let (Some(_), Some(k)) = (&v.project, &v.compose_volume) {
            by_key.entry(k.as_str()).or_default().push(v);
        }
    }
    let mut out = Vec::new();
    for group in by_key.values() {
        for used in group.iter().filter(|v| v.in_use) {
            for other in group
                .iter()
                .filter(|o| o.project != used.project && o.size > used.size.max(0))
            {
                out.push(format!(
                    "volume {} (project {}, in use, {}, created {}) has a lookalike holding more data: {} (project {}, {}, created {}); the compose project name may have changed and the real data may be in {}; see docs/docker.md, \"Changed project name\"",
                    used.name,
                    used.project.as_deref().unwrap_or("?"),
                    human_size(used.size),
                    when(&used.created),
                    other.name,
                    other.project.as_deref().unwrap_or("?"),
                    human_size(other.size),
                    when(&other.created),
                    other.name,
                ));
            }
        }
    }
    out
}

/// Compose services with running containers in more than one project.
pub fn split_services(ctrs: &[ContainerFact]) -> Vec<String> {
    let mut by_service: BTreeMap<&str, Vec<&ContainerFact>> = BTreeMap::new();
    for c in ctrs.iter().filter(|c| c.running) {
        if let (Some(s), Some(_)) = (&c.service, &c.project) {
            by_service.entry(s.as_str()).or_default().push(c);
        }
    }
    let mut out = Vec::new();
    for (service, list) in by_service {
        let mut projects: Vec<&str> = list.iter().filter_map(|c| c.project.as_deref()).collect();
        projects.sort();
        projects.dedup();
        if projects.len() > 1 {
            let names: Vec<String> = list
                .iter()
                .map(|c| {
                    format!(
                        "{} (project {})",
                        c.name,
                        c.project.as_deref().unwrap_or("?")
                    )
                })
                .collect();
            out.push(format!(
                "compose service {service} has running containers in {} projects: {}; an old deployment may still be running and take traffic (remove the one that should not run)",
                projects.len(),
                names.join(", ")
            ));
        }
    }
    out
}

/// Gather the facts from the engine and apply both rules. Volumes of `focus` (a compose
/// project about to lose its volumes) count as in use.
pub async fn check(engine: &Engine, focus: Option<&str>) -> Result<Vec<String>> {
    let (facts, cfacts) = facts(engine, focus).await?;
    let mut out = lookalike_volumes(&facts);
    out.extend(split_services(&cfacts));
    Ok(out)
}

/// The volume rule only, for the volumes of `project` (`drkit init`): those that have a
/// lookalike holding more data in another project.
pub async fn volumes_of(engine: &Engine, project: Option<&str>) -> Result<Vec<String>> {
    let (facts, _) = facts(engine, project).await?;
    let mine: Vec<VolumeFact> = facts
        .into_iter()
        .map(|mut f| {
            if project.is_some() && f.project.as_deref() != project {
                f.in_use = false;
            }
            f
        })
        .collect();
    Ok(lookalike_volumes(&mine))
}

/// The facts the rules need, from the engine.
async fn facts(
    engine: &Engine,
    focus: Option<&str>,
) -> Result<(Vec<VolumeFact>, Vec<ContainerFact>)> {
    let vols = volumes::list(engine, &[]).await?;
    let ctrs = volumes::containers(engine, &[]).await?;
    let need_sizes = {
        let mut seen: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for v in &vols {
            if let (Some(p), Some(k)) = (v.project(), v.compose_volume()) {
                seen.entry(k).or_default().push(p);
            }
        }
        seen.values().any(|ps| ps.len() > 1)
    };
    let sizes = if need_sizes {
        volumes::sizes(engine).await?
    } else {
        Default::default()
    };
    let facts: Vec<VolumeFact> = vols
        .iter()
        .map(|v| VolumeFact {
            name: v.name.clone(),
            project: v.project().map(str::to_string),
            compose_volume: v.compose_volume().map(str::to_string),
            size: sizes.get(&v.name).copied().unwrap_or(-1),
            created: v.created,
            in_use: focus.is_some_and(|f| v.project() == Some(f))
                || ctrs
                    .iter()
                    .any(|c| c.running && c.volumes.contains(&v.name)),
        })
        .collect();
    let cfacts: Vec<ContainerFact> = ctrs
        .iter()
        .map(|c| ContainerFact {
            name: c.name.clone(),
            project: c.project.clone(),
            service: c.service.clone(),
            running: c.running,
        })
        .collect();
    Ok((facts, cfacts))
}

/// For `drkit doctor`: connect to the engine (`host`, else `DOCKER_HOST`, else the local
/// socket) and return the lookalike warnings for the whole engine.
pub async fn doctor_warnings(host: Option<&str>) -> Result<Vec<String>> {
    let engine = Engine::connect(host).await?;
    check(&engine, None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(name: &str, project: &str, key: &str, size: i64, in_use: bool) -> VolumeFact {
        VolumeFact {
            name: name.into(),
            project: Some(project.into()),
            compose_volume: Some(key.into()),
            size,
            created: None,
            in_use,
        }
    }

    #[test]
    fn lookalike_table() {
        let cases: Vec<(Vec<VolumeFact>, Vec<&str>)> = vec![
            // The incident: the fresh volume is in use, the old one holds the data.
            (
                vec![
                    v(
                        "copilotos_mongodb_data",
                        "copilotos",
                        "mongodb_data",
                        371_000_000,
                        false,
                    ),
                    v(
                        "copilotos-prod_mongodb_data",
                        "copilotos-prod",
                        "mongodb_data",
                        4096,
                        true,
                    ),
                ],
                vec![
                    "copilotos-prod_mongodb_data",
                    "copilotos_mongodb_data",
                    "353.8 MiB",
                    "4.0 KiB",
                ],
            ),
            // The one in use is the bigger one: fine.
            (
                vec![
                    v("old_db", "old", "db", 10, false),
                    v("new_db", "new", "db", 1000, true),
                ],
                vec![],
            ),
            // Different compose keys: not lookalikes.
            (
                vec![
                    v("a_db", "a", "db", 1000, false),
                    v("b_data", "b", "data", 1, true),
                ],
                vec![],
            ),
            // Neither in use: nothing to say.
            (
                vec![
                    v("a_db", "a", "db", 1000, false),
                    v("b_db", "b", "db", 1, false),
                ],
                vec![],
            ),
            // Unknown sizes never trigger.
            (
                vec![
                    v("a_db", "a", "db", -1, false),
                    v("b_db", "b", "db", -1, true),
                ],
                vec![],
            ),
        ];
        for (facts, want) in cases {
            let got = lookalike_volumes(&facts);
            if want.is_empty() {
                assert!(got.is_empty(), "{facts:?}: {got:?}");
            } else {
                assert_eq!(got.len(), 1, "{got:?}");
                for w in want {
                    assert!(got[0].contains(w), "{:?} lacks {w}", got[0]);
                }
            }
        }
    }

    #[test]
    fn split_service_table() {
        let c = |name: &str, project: &str, service: &str, running: bool| ContainerFact {
            name: name.into(),
            project: Some(project.into()),
            service: Some(service.into()),
            running,
        };
        let got = split_services(&[
            c("app-backend-1", "app", "backend", true),
            c("miracollo-backend-1", "miracollo", "backend", true),
            c("miracollo-frontend-1", "miracollo", "frontend", true),
        ]);
        assert_eq!(got.len(), 1);
        assert!(
            got[0].contains("app-backend-1 (project app)")
                && got[0].contains("miracollo-backend-1"),
            "{}",
            got[0]
        );
        // Scaled replicas of one project, and a stopped old container: fine.
        assert!(split_services(&[
            c("p-web-1", "p", "web", true),
            c("p-web-2", "p", "web", true),
            c("old-web-1", "old", "web", false)
        ])
        .is_empty());
    }
}
