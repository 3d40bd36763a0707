//! The catalog: the storage itself. A backup exists if and only if its manifest exists, so
//! listing backups is listing `*/manifest.json` keys and reading them.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use rand::Rng;
use tokio::io::AsyncReadExt;

use crate::manifest::{format_time, manifest_key, MANIFEST_FILE};
use crate::{Error, ErrorKind, Manifest, ObjectMeta, Result, Storage};

/// A new backup id for a backup started at `now`: `YYYYMMDDTHHMMSSZ-<6 hex>`, sorting by time.
pub fn new_backup_id(now: DateTime<Utc>, rng: &mut impl Rng) -> String {
    format!(
        "{}-{:06x}",
        now.format("%Y%m%dT%H%M%SZ"),
        rng.gen_range(0..0x100_0000u32)
    )
}

/// Whether `id` has the shape of a backup id.
pub fn is_backup_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 23
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && b[16] == b'-'
        && b[17..].iter().all(|c| c.is_ascii_hexdigit())
}

/// Read one object fully (only for small objects: manifests, reports).
pub async fn read_small(storage: &dyn Storage, key: &str) -> Result<Vec<u8>> {
    let mut r = storage.get(key).await?;
    let mut out = Vec::new();
    r.read_to_end(&mut out)
        .await
        .map_err(|e| crate::from_io(e, ErrorKind::Storage, format!("reading {key}")))?;
    Ok(out)
}

/// The manifest of backup `id` of `job`. A missing one is [`ErrorKind::NotFound`].
pub async fn load(storage: &dyn Storage, job: &str, id: &str) -> Result<Manifest> {
    let key = manifest_key(job, id);
    let bytes = read_small(storage, &key).await.map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            Error::not_found(format!(
                "job {job} has no backup {id} on {}; `drkit list {job}` shows the backups",
                storage.describe()
            ))
        } else {
            e
        }
    })?;
    Manifest::from_json(&bytes, &key)
}

/// The ids of the complete backups of `job` found in a storage listing, oldest first.
pub fn complete_ids(objects: &[ObjectMeta], job: &str) -> Vec<String> {
    let prefix = format!("{job}/");
    let mut ids: Vec<String> = objects
        .iter()
        .filter_map(|o| o.key.strip_prefix(&prefix))
        .filter_map(|rest| rest.strip_suffix(&format!("/{MANIFEST_FILE}")))
        .filter(|id| is_backup_id(id))
        .map(str::to_string)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Keys in a listing of `job` that belong to no complete backup: backup folders without a
/// manifest, and stray files. Drill reports (`<job>/drills/...`) are kept. Keys modified
/// after `older_than` are left alone (a run may still be writing them).
pub fn incomplete_keys(
    objects: &[ObjectMeta],
    job: &str,
    older_than: Option<DateTime<Utc>>,
) -> Vec<String> {
    let complete = complete_ids(objects, job);
    let prefix = format!("{job}/");
    objects
        .iter()
        .filter(|o| {
            let Some(rest) = o.key.strip_prefix(&prefix) else {
                return false;
            };
            let top = rest.split('/').next().unwrap_or("");
            if top == "drills" || top.starts_with('.') {
                return false;
            }
            if complete.binary_search(&top.to_string()).is_ok() {
                return false;
            }
            match (older_than, o.modified) {
                (Some(limit), Some(m)) => m < limit,
                (Some(_), None) => false,
                (None, _) => true,
            }
        })
        .map(|o| o.key.clone())
        .collect()
}

/// The jobs that have at least one complete backup in a listing of the whole storage.
pub fn jobs_in(objects: &[ObjectMeta]) -> Vec<String> {
    let mut jobs: Vec<String> = objects
        .iter()
        .filter_map(|o| {
            let mut parts = o.key.split('/');
            let (job, id, file) = (parts.next()?, parts.next()?, parts.next()?);
            (parts.next().is_none() && file == MANIFEST_FILE && is_backup_id(id))
                .then(|| job.to_string())
        })
        .collect();
    jobs.sort();
    jobs.dedup();
    jobs
}

/// The complete backups of `job`, newest first (by start time, then id).
pub async fn list(storage: &dyn Storage, job: &str) -> Result<Vec<Manifest>> {
    let objects = storage.list(&format!("{job}/")).await?;
    let mut out = Vec::new();
    for id in complete_ids(&objects, job) {
        out.push(load(storage, job, &id).await?);
    }
    sort_newest_first(&mut out);
    Ok(out)
}

/// Sort manifests newest first: by start time (milliseconds), then by id.
pub fn sort_newest_first(backups: &mut [Manifest]) {
    backups.sort_by(|a, b| {
        b.started_at
            .cmp(&a.started_at)
            .then_with(|| b.id.cmp(&a.id))
    });
}

/// Parse a `--at` time: RFC 3339, or `YYYY-MM-DD[ HH:MM[:SS]]` (also with `T`) read as UTC.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let normalized = s.replacen('T', " ", 1);
    for fmt in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(&normalized, fmt) {
            return Ok(Utc.from_utc_datetime(&t));
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight exists")));
    }
    Err(Error::config(format!(
        "cannot read time {s:?}: use RFC 3339 (2026-03-01T02:00:00Z) or YYYY-MM-DD[ HH:MM[:SS]] in UTC"
    )))
}

/// Choose the newest backup that started at or before `at`, from `backups` in any order.
/// Returns the choice and a sentence saying why.
pub fn choose_at(backups: &[Manifest], at: DateTime<Utc>) -> Result<(&Manifest, String)> {
    let chosen = backups
        .iter()
        .filter(|m| m.started_at <= at)
        .max_by(|a, b| {
            a.started_at
                .cmp(&b.started_at)
                .then_with(|| a.id.cmp(&b.id))
        });
    match chosen {
        Some(m) => Ok((
            m,
            format!(
                "chose backup {} (started {}), the newest complete backup started at or before {}",
                m.id,
                format_time(&m.started_at),
                format_time(&at)
            ),
        )),
        None => match backups.iter().min_by_key(|m| m.started_at) {
            Some(oldest) => Err(Error::not_found(format!(
                "no backup started at or before {}: the oldest is {} (started {})",
                format_time(&at),
                oldest.id,
                format_time(&oldest.started_at)
            ))),
            None => Err(Error::not_found("there are no backups yet")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn meta(key: &str, age_min: i64, now: DateTime<Utc>) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size: 1,
            modified: Some(now - chrono::Duration::minutes(age_min)),
        }
    }

    #[test]
    fn ids_sort_by_time_and_parse() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let t = parse_time("2026-01-02 03:04:05").unwrap();
        let id = new_backup_id(t, &mut rng);
        assert!(id.starts_with("20260102T030405Z-"), "{id}");
        assert!(is_backup_id(&id));
        assert!(!is_backup_id("20260102T030405Z"));
        assert!(!is_backup_id("drills"));
    }

    #[test]
    fn parse_time_table() {
        let cases = [
            ("2026-03-01T02:00:00Z", "2026-03-01T02:00:00Z"),
            ("2026-03-01T04:00:00+02:00", "2026-03-01T02:00:00Z"),
            ("2026-03-01 02:00", "2026-03-01T02:00:00Z"),
            ("2026-03-01 02:00:30", "2026-03-01T02:00:30Z"),
            ("2026-03-01T02:00", "2026-03-01T02:00:00Z"),
            ("2026-03-01", "2026-03-01T00:00:00Z"),
        ];
        for (input, want) in cases {
            assert_eq!(format_time(&parse_time(input).unwrap()), want, "{input}");
        }
        for bad in ["yesterday", "2026-13-01", ""] {
            assert_eq!(
                parse_time(bad).unwrap_err().kind(),
                ErrorKind::Config,
                "{bad}"
            );
        }
    }

    #[test]
    fn incomplete_and_complete() {
        let now = Utc::now();
        let a = "20260101T000000Z-aaaaaa";
        let b = "20260102T000000Z-bbbbbb";
        let objects = vec![
            meta(&format!("db/{a}/data.sqlite.zst"), 100, now),
            meta(&format!("db/{a}/manifest.json"), 100, now),
            meta(&format!("db/{b}/data.sqlite.zst.drkit-tmp-1-x"), 100, now),
            meta("db/20260103T000000Z-cccccc/data.sqlite.zst", 1, now),
            meta("db/drills/20260101T000000Z.json", 100, now),
            meta("other/20260101T000000Z-aaaaaa/manifest.json", 100, now),
        ];
        assert_eq!(complete_ids(&objects, "db"), vec![a.to_string()]);
        assert_eq!(
            incomplete_keys(&objects, "db", None),
            vec![
                format!("db/{b}/data.sqlite.zst.drkit-tmp-1-x"),
                "db/20260103T000000Z-cccccc/data.sqlite.zst".to_string()
            ]
        );
        assert_eq!(
            incomplete_keys(&objects, "db", Some(now - chrono::Duration::minutes(10))),
            vec![format!("db/{b}/data.sqlite.zst.drkit-tmp-1-x")]
        );
        assert_eq!(
            jobs_in(&objects),
            vec!["db".to_string(), "other".to_string()]
        );
    }

    fn manifest_at(id: &str, t: &str) -> Manifest {
        let mut m: Manifest = serde_json::from_value(serde_json::json!({
            "format_version": 1, "id": id, "job": "db", "driver": "sqlite",
            "started_at": t, "finished_at": t,
            "data": {"key": "k", "compression": "zstd", "encryption": "none", "raw_size": 1,
                     "raw_sha256": "a", "stored_size": 1, "stored_sha256": "b"},
            "drkit_version": "0", "host": "h"
        }))
        .unwrap();
        m.id = id.into();
        m
    }

    #[test]
    fn choose_at_table() {
        let backups = vec![
            manifest_at("b1", "2026-01-01T00:00:00Z"),
            manifest_at("b2", "2026-01-02T00:00:00Z"),
            manifest_at("b3", "2026-01-03T00:00:00Z"),
        ];
        let cases = [
            ("2026-01-02T00:00:00Z", Some("b2")),
            ("2026-01-02T12:00:00Z", Some("b2")),
            ("2026-02-01", Some("b3")),
            ("2026-01-01", Some("b1")),
            ("2025-12-31", None),
        ];
        for (at, want) in cases {
            let got = choose_at(&backups, parse_time(at).unwrap());
            match want {
                Some(id) => assert_eq!(got.unwrap().0.id, id, "{at}"),
                None => {
                    let e = got.unwrap_err();
                    assert_eq!(e.kind(), ErrorKind::NotFound);
                    assert!(e.to_string().contains("b1"), "{e}");
                }
            }
        }
    }
}
