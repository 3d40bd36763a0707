//! Names and selection, all pure: database names and namespace patterns, which databases and
//! collections a dump takes, where a restore goes (`--to`: another server or renamed
//! databases, and a drill's scratch databases), and the namespaces a manifest names.

use std::collections::BTreeMap;

use drkit_core::drill::ScratchName;
use drkit_core::{Error, Manifest, Result};

/// Databases never dumped: the server's own.
pub(super) const SYSTEM_DATABASES: [&str; 3] = ["admin", "local", "config"];

pub(super) fn check_db_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 63 || name.contains(['/', '\\', '.', ' ', '"', '$', '\0']) {
        return Err(format!("{name:?} is not a valid database name"));
    }
    Ok(())
}

/// A namespace pattern: `db.collection` or `db.*`.
pub(super) fn parse_pattern(p: &str) -> std::result::Result<(&str, &str), String> {
    match p.split_once('.') {
        Some((db, coll)) if !db.is_empty() && !coll.is_empty() && check_db_name(db).is_ok() => {
            Ok((db, coll))
        }
        _ => Err(format!(
            "{p:?} is not a namespace: write db.collection, or db.* for every collection of db"
        )),
    }
}

fn matches(pattern: &str, db: &str, coll: &str) -> bool {
    match parse_pattern(pattern) {
        Ok((pdb, "*")) => pdb == db,
        Ok((pdb, pcoll)) => pdb == db && pcoll == coll,
        Err(_) => false,
    }
}

/// Whether namespace `db.coll` is dumped under the include and exclude lists.
pub(super) fn selected(db: &str, coll: &str, include: &[String], exclude: &[String]) -> bool {
    (include.is_empty() || include.iter().any(|p| matches(p, db, coll)))
        && !exclude.iter().any(|p| matches(p, db, coll))
}

/// Which databases to dump: the configured ones (each must exist), else every non-system one
/// (limited to the databases named by `include`, when given).
pub(super) fn choose_databases(
    existing: &[String],
    configured: Option<&[String]>,
    include: &[String],
) -> std::result::Result<Vec<String>, String> {
    if let Some(dbs) = configured {
        let missing: Vec<&String> = dbs.iter().filter(|d| !existing.contains(d)).collect();
        if !missing.is_empty() {
            return Err(format!(
                "database(s) {} do not exist on the server (it has: {})",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                if existing.is_empty() {
                    "none".to_string()
                } else {
                    existing.join(", ")
                }
            ));
        }
        return Ok(dbs.to_vec());
    }
    let mut out: Vec<String> = existing
        .iter()
        .filter(|d| !SYSTEM_DATABASES.contains(&d.as_str()))
        .filter(|d| {
            include.is_empty()
                || include
                    .iter()
                    .any(|p| parse_pattern(p).is_ok_and(|(pdb, _)| pdb == d.as_str()))
        })
        .cloned()
        .collect();
    out.sort();
    Ok(out)
}

/// Where a restore goes: another server (`--to mongodb://...`) and/or renamed databases
/// (`--to app=app_restored[,other=other_copy]`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct RestoreTarget {
    pub(super) url: Option<String>,
    /// Source database -> target database. When not empty, only these databases are restored.
    pub(super) map: Vec<(String, String)>,
}

impl RestoreTarget {
    pub(super) fn parse(to: Option<&str>) -> std::result::Result<RestoreTarget, String> {
        let Some(to) = to.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(RestoreTarget::default());
        };
        // `app=copy;mongodb://host/`: a mapping onto another server. A database name holds no
        // `/`, so the first `mongodb://` is where the URL starts.
        let url_at = ["mongodb://", "mongodb+srv://"]
            .iter()
            .filter_map(|scheme| to.find(scheme))
            .min();
        match url_at {
            Some(0) => {
                return Ok(RestoreTarget {
                    url: Some(to.to_string()),
                    map: Vec::new(),
                })
            }
            Some(at) => {
                let Some(mapping) = to[..at].trim_end().strip_suffix(';') else {
                    return Err(format!(
                        "--to {}: write a database mapping and a server as app=app_restored;mongodb://host/",
                        drkit_core::redact_url(to)
                    ));
                };
                let mut target = RestoreTarget::parse_mapping(mapping)?;
                target.url = Some(to[at..].to_string());
                return Ok(target);
            }
            None => {}
        }
        RestoreTarget::parse_mapping(to)
    }

    /// `app=app_restored[,other=other_copy]`.
    fn parse_mapping(to: &str) -> std::result::Result<RestoreTarget, String> {
        let mut map: Vec<(String, String)> = Vec::new();
        for pair in to.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let Some((from, into)) = pair.split_once('=') else {
                return Err(format!(
                    "--to {to:?}: expected a database mapping such as app=app_restored (several separated by commas), or a mongodb:// url"
                ));
            };
            let (from, into) = (from.trim(), into.trim());
            check_db_name(from).map_err(|e| format!("--to {to:?}: {e}"))?;
            check_db_name(into).map_err(|e| format!("--to {to:?}: {e}"))?;
            if SYSTEM_DATABASES.contains(&into) {
                return Err(format!(
                    "--to {to:?}: refusing to restore into the system database {into}"
                ));
            }
            if map.iter().any(|(f, _)| f == from) {
                return Err(format!("--to {to:?}: database {from} is mapped twice"));
            }
            if map.iter().any(|(_, t)| t == into) {
                return Err(format!("--to {to:?}: two databases are mapped to {into}"));
            }
            map.push((from.to_string(), into.to_string()));
        }
        Ok(RestoreTarget { url: None, map })
    }

    /// The database a source database is restored into; None when it is not restored.
    pub(super) fn target_db(&self, db: &str) -> Option<String> {
        if self.map.is_empty() {
            return Some(db.to_string());
        }
        self.map
            .iter()
            .find(|(f, _)| f == db)
            .map(|(_, t)| t.clone())
    }

    pub(super) fn describe(&self, shown_url: &str) -> String {
        if self.map.is_empty() {
            shown_url.to_string()
        } else {
            let m: Vec<String> = self
                .map
                .iter()
                .map(|(f, t)| format!("{f} -> {t}"))
                .collect();
            format!("{shown_url} ({})", m.join(", "))
        }
    }
}

/// The `--to` of a drill of backup `manifest`: its databases into scratch databases named
/// after `name` (on the server `url`, when given: `mapping;url`); None when the backup holds
/// no database.
pub(super) fn drill_scratch(
    manifest: &Manifest,
    name: &ScratchName,
    url: Option<&str>,
) -> Result<Option<String>> {
    let (counts, views) = manifest_namespaces(manifest)?;
    let mut dbs: Vec<&str> = counts
        .keys()
        .chain(views.iter())
        .map(|ns| split_ns(ns).0)
        .collect();
    dbs.sort();
    dbs.dedup();
    if dbs.is_empty() {
        return Ok(None);
    }
    let mapping = drill_mapping(&dbs, name);
    Ok(Some(match url {
        Some(url) => format!("{mapping};{url}"),
        None => mapping,
    }))
}

/// `--to` for a drill: database number `i` of the backup into the scratch database
/// `drkit_drill_<job>_<time>_<tag>_<i>` (the job cut so that the whole fits MongoDB's 63
/// bytes; [`drkit_core::drill::scratch_time`] reads the time through the `_<i>` suffix).
fn drill_mapping(dbs: &[&str], name: &ScratchName) -> String {
    dbs.iter()
        .enumerate()
        .map(|(i, db)| format!("{db}={}", scratch_db(name, i)))
        .collect::<Vec<_>>()
        .join(",")
}

/// The scratch database of the `i`th database of a drill named `name`.
fn scratch_db(name: &ScratchName, i: usize) -> String {
    let suffix = format!("_{i}");
    format!("{}{suffix}", name.render('_', MAX_DB_NAME - suffix.len()))
}

/// MongoDB's limit on a database name, in bytes.
const MAX_DB_NAME: usize = 63;

/// Whether `db` is named like a drill's scratch database (and so may be dropped by a drill's
/// cleanup or sweep).
pub(super) fn is_scratch_db(db: &str) -> bool {
    db.starts_with(drkit_core::drill::SCRATCH_PREFIX)
        && drkit_core::drill::scratch_time(db).is_some()
}

/// Every database that `--to` maps must be in the backup.
pub(super) fn check_mapping<'a>(
    target: &RestoreTarget,
    namespaces: impl Iterator<Item = &'a String>,
) -> Result<()> {
    let dbs: Vec<&str> = {
        let mut v: Vec<&str> = namespaces.map(|ns| split_ns(ns).0).collect();
        v.sort();
        v.dedup();
        v
    };
    for (from, _) in &target.map {
        if !dbs.contains(&from.as_str()) {
            return Err(Error::config(format!(
                "--to maps database {from}, which is not in this backup (it holds: {})",
                if dbs.is_empty() {
                    "nothing".to_string()
                } else {
                    dbs.join(", ")
                }
            )));
        }
    }
    Ok(())
}

/// The namespaces a manifest's stats name: collections with their counts, and views.
pub(super) fn manifest_namespaces(
    manifest: &Manifest,
) -> Result<(BTreeMap<String, u64>, Vec<String>)> {
    let bad = || {
        Error::integrity(format!(
            "backup {}/{}: its manifest has no MongoDB stats (stats.collections); it was not written by the mongodb driver",
            manifest.job, manifest.id
        ))
    };
    let colls = manifest
        .stats
        .get("collections")
        .and_then(|v| v.as_object())
        .ok_or_else(bad)?;
    let mut counts = BTreeMap::new();
    for (ns, n) in colls {
        counts.insert(ns.clone(), n.as_u64().ok_or_else(bad)?);
    }
    let views = match manifest.stats.get("views") {
        None => Vec::new(),
        Some(v) => v
            .as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|x| x.as_str().map(str::to_string).ok_or_else(bad))
            .collect::<Result<Vec<_>>>()?,
    };
    Ok((counts, views))
}

pub(super) fn split_ns(ns: &str) -> (&str, &str) {
    ns.split_once('.').unwrap_or((ns, ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_selection() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        #[allow(clippy::type_complexity)]
        let cases: &[(&[&str], &[&str], &str, &str, bool)] = &[
            (&[], &[], "app", "users", true),
            (&["app.users"], &[], "app", "users", true),
            (&["app.users"], &[], "app", "orders", false),
            (&["app.*"], &[], "app", "orders", true),
            (&["app.*"], &["app.sessions"], "app", "sessions", false),
            (&[], &["app.*"], "app", "users", false),
            (&[], &["app.*"], "other", "users", true),
            (&["app.a.b"], &[], "app", "a.b", true),
        ];
        for (inc, exc, db, coll, want) in cases {
            assert_eq!(
                selected(db, coll, &s(inc), &s(exc)),
                *want,
                "{inc:?} {exc:?} {db}.{coll}"
            );
        }
    }

    #[test]
    fn database_choice() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let existing = s(&["admin", "app", "config", "local", "shop"]);
        assert_eq!(
            choose_databases(&existing, None, &[]).unwrap(),
            s(&["app", "shop"])
        );
        assert_eq!(
            choose_databases(&existing, Some(&s(&["shop"])), &[]).unwrap(),
            s(&["shop"])
        );
        assert_eq!(
            choose_databases(&existing, None, &s(&["shop.orders"])).unwrap(),
            s(&["shop"])
        );
        let e = choose_databases(&existing, Some(&s(&["nope", "app"])), &[]).unwrap_err();
        assert!(e.contains("nope") && e.contains("do not exist"), "{e}");
    }

    #[test]
    fn restore_target_parsing() {
        let m = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            RestoreTarget::parse(None).unwrap(),
            RestoreTarget::default()
        );
        assert_eq!(
            RestoreTarget::parse(Some("app=app_restored")).unwrap().map,
            m(&[("app", "app_restored")])
        );
        assert_eq!(
            RestoreTarget::parse(Some(" a=b , c=d ")).unwrap().map,
            m(&[("a", "b"), ("c", "d")])
        );
        let url = RestoreTarget::parse(Some("mongodb://h:1/")).unwrap();
        assert_eq!(url.url.as_deref(), Some("mongodb://h:1/"));
        for bad in ["app", "a=b,a=c", "a=x,b=x", "a=admin", "a=b.c", "=b"] {
            assert!(RestoreTarget::parse(Some(bad)).is_err(), "{bad}");
        }
        let t = RestoreTarget::parse(Some("app=copy")).unwrap();
        assert_eq!(t.target_db("app").as_deref(), Some("copy"));
        assert_eq!(t.target_db("other"), None);
        assert_eq!(
            RestoreTarget::default().target_db("x").as_deref(),
            Some("x")
        );
    }

    #[test]
    fn drill_mapping_names_scratch_databases() {
        use chrono::TimeZone;
        let at = chrono::Utc.with_ymd_and_hms(2026, 12, 3, 4, 5, 6).unwrap();
        let name = ScratchName {
            job: "m".into(),
            at,
            tag: 0xabc,
        };
        let long = "x".repeat(60);
        let m = drill_mapping(&["app", &long], &name);
        let t = RestoreTarget::parse(Some(&m)).unwrap();
        assert_eq!(
            t.target_db("app").as_deref(),
            Some("drkit_drill_m_20261203T040506_00000abc_0")
        );
        assert_eq!(
            t.target_db(&long).as_deref(),
            Some("drkit_drill_m_20261203T040506_00000abc_1")
        );
        let long_job = ScratchName {
            job: "j".repeat(80),
            ..name.clone()
        };
        for i in [0, 7, 123] {
            let db = scratch_db(&long_job, i);
            assert!(db.len() <= 63 && db.ends_with(&format!("_{i}")), "{db}");
            assert_eq!(drkit_core::drill::scratch_time(&db), Some(at), "{db}");
            assert!(is_scratch_db(&db));
            assert!(check_db_name(&db).is_ok());
        }
        for other in [
            "app",
            "drkit_drill_x",
            "drkit_drill_00000abc_0_app",
            "drkit-drill-m-20261203T040506-00000abc",
        ] {
            assert!(!is_scratch_db(other), "{other}");
        }
    }

    #[test]
    fn restore_target_with_mapping_and_server() {
        let t = RestoreTarget::parse(Some("app=copy,b=c;mongodb://u:pw@h:1/?authSource=admin"))
            .unwrap();
        assert_eq!(
            t.url.as_deref(),
            Some("mongodb://u:pw@h:1/?authSource=admin")
        );
        assert_eq!(t.target_db("app").as_deref(), Some("copy"));
        assert_eq!(t.target_db("b").as_deref(), Some("c"));
        let t = RestoreTarget::parse(Some("app=copy ; mongodb+srv://h/")).unwrap();
        assert_eq!(t.url.as_deref(), Some("mongodb+srv://h/"));
        let e = RestoreTarget::parse(Some("app=copy mongodb://u:secret@h/")).unwrap_err();
        assert!(!e.contains("secret"), "{e}");
        assert!(RestoreTarget::parse(Some("app;mongodb://h/")).is_err());
    }
}
