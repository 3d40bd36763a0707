//! What each driver's manifest `stats` count, for the suspect checks (`drkit_core::suspect`):
//! read from the JSON each driver writes, so that manifests of earlier backups are read the
//! same way as new ones.

use std::collections::BTreeMap;

use drkit_core::suspect::Measure;
use serde_json::Value;

fn count(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_i64().map(|n| n.max(0) as u64))
}

fn map_counts(v: &Value) -> BTreeMap<String, u64> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| count(v).map(|n| (k.clone(), n)))
                .collect()
        })
        .unwrap_or_default()
}

/// SQLite: `rows` in total, `tables` by name.
#[cfg(feature = "sqlite")]
pub(crate) fn sqlite(stats: &Value) -> Measure {
    Measure {
        unit: "rows",
        part: "table",
        total: count(&stats["rows"]),
        parts: map_counts(&stats["tables"]),
        size_floor: true,
    }
}

/// PostgreSQL: rows and large objects over every database, per `db.schema.table`; with
/// estimated row counts only an empty dump is counted (estimates of never-analyzed tables
/// are missing, and would look like a shrink).
#[cfg(feature = "postgres")]
pub(crate) fn postgres(stats: &Value) -> Measure {
    let exact = stats["row_counts"] == "exact";
    let empty = stats["empty"] == Value::Bool(true);
    let mut parts = BTreeMap::new();
    if exact {
        for db in stats["databases"].as_array().into_iter().flatten() {
            for t in db["tables"].as_array().into_iter().flatten() {
                if let (Some(d), Some(s), Some(n), Some(rows)) = (
                    db["name"].as_str(),
                    t["schema"].as_str(),
                    t["name"].as_str(),
                    count(&t["rows"]),
                ) {
                    parts.insert(format!("{d}.{s}.{n}"), rows);
                }
            }
        }
    }
    let total = if exact {
        count(&stats["rows"]).map(|r| r + count(&stats["large_objects"]).unwrap_or(0))
    } else if empty {
        Some(0)
    } else {
        None
    };
    Measure {
        unit: "rows",
        part: "table",
        total,
        parts,
        size_floor: true,
    }
}

/// MongoDB: `documents` in total, `collections` by namespace. A dump of a few small
/// documents can be under 1 KiB, so no size floor.
#[cfg(feature = "mongodb")]
pub(crate) fn mongodb(stats: &Value) -> Measure {
    Measure {
        unit: "documents",
        part: "collection",
        total: count(&stats["documents"]),
        parts: map_counts(&stats["collections"]),
        size_floor: false,
    }
}

/// Docker volumes: regular `files`; a tar is never under 1 KiB (its end marker alone is).
#[cfg(feature = "docker")]
pub(crate) fn docker_volume(stats: &Value) -> Measure {
    Measure {
        unit: "files",
        part: "",
        total: count(&stats["files"]),
        parts: BTreeMap::new(),
        size_floor: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[cfg(all(
        feature = "sqlite",
        feature = "postgres",
        feature = "mongodb",
        feature = "docker"
    ))]
    #[test]
    fn measures_of_each_driver() {
        let m = sqlite(&json!({"empty": false, "tables": {"a": 3, "b": 0}, "rows": 3}));
        assert_eq!((m.total, m.parts.len(), m.parts["a"]), (Some(3), 2, 3));
        let pg = json!({"row_counts": "exact", "rows": 10, "large_objects": 2, "empty": false,
            "databases": [{"name": "app", "tables": [{"schema": "public", "name": "t", "rows": 10}]}]});
        let m = postgres(&pg);
        assert_eq!((m.total, m.parts["app.public.t"]), (Some(12), 10));
        let est = json!({"row_counts": "estimate", "rows": 10, "empty": false, "databases": []});
        assert_eq!(postgres(&est).total, None);
        let est_empty =
            json!({"row_counts": "estimate", "rows": 0, "empty": true, "databases": []});
        assert_eq!(postgres(&est_empty).total, Some(0));
        let m = mongodb(&json!({"collections": {"shop.carts": 5}, "documents": 5}));
        assert_eq!(
            (m.total, m.parts["shop.carts"], m.size_floor),
            (Some(5), 5, false)
        );
        let m = docker_volume(&json!({"files": 4, "entries": 9}));
        assert_eq!((m.total, m.unit), (Some(4), "files"));
        // garbage stats from a hostile manifest measure nothing, without a panic
        for bad in [
            json!(null),
            json!("x"),
            json!({"rows": "many", "tables": [1]}),
        ] {
            assert_eq!(sqlite(&bad).total, None);
            assert_eq!(postgres(&bad).total, None);
            assert!(mongodb(&bad).parts.is_empty());
        }
    }
}
