//! The storage layout: the key of every object drkit writes, the rules that read a listing by
//! it, and the cleaning of leftovers, written once over the [`Storage`] primitives for every
//! storage (`docs/storage-layout.md` says the same for operators).
//!
//! ```text
//! <job>/<backup-id>/data.<ext>[.zst|.gz]   the archive
//! <job>/<backup-id>/manifest.json.sig      with signing: the manifest's signature, written just before it
//! <job>/<backup-id>/manifest.json          written last: its presence is the commit
//! <job>/<backup-id>/accepted.json[.sig]    `drkit accept`: a suspect backup marked good
//! <job>/drills/<report>.json[.sig]         restore drill reports
//! <job>/.<name>                            the storage's own (the local folder's job lock)
//! ```

use chrono::{DateTime, Utc};

use crate::catalog::is_backup_id;
use crate::{ObjectMeta, Result, Storage};

/// File name of the manifest inside a backup's folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// File name of the record `drkit accept` writes into a backup's folder.
pub const ACCEPTED_FILE: &str = "accepted.json";

/// Appended to a record's key to name its signature (`manifest.json.sig`).
pub const SIG_SUFFIX: &str = ".sig";

/// The folder of a job that holds its restore drill reports.
pub const DRILLS_FOLDER: &str = "drills";

/// The lease object of a job on storages that keep leases (`<job>/.drkit.lease`, S3).
pub const LEASE_FILE: &str = ".drkit.lease";

/// Everything of `job` in a storage is under this prefix: `<job>/`.
pub fn job_prefix(job: &str) -> String {
    format!("{job}/")
}

/// The folder of backup `id` of `job` in a storage, `<job>/<id>/`.
pub fn backup_folder(job: &str, id: &str) -> String {
    format!("{job}/{id}/")
}

/// The key of a backup's archive: `<job>/<id>/data.<extension><suffix>`, where the extension
/// is the source's (`sqlite`, `pgdump`...) and the suffix the compression's (`.zst`, `.gz`, ``).
pub fn data_key(job: &str, id: &str, extension: &str, suffix: &str) -> String {
    format!("{job}/{id}/data.{extension}{suffix}")
}

/// The storage key of the manifest of backup `id` of `job`.
pub fn manifest_key(job: &str, id: &str) -> String {
    format!("{job}/{id}/{MANIFEST_FILE}")
}

/// The storage key of the accept record of backup `id` of `job`.
pub fn accepted_key(job: &str, id: &str) -> String {
    format!("{job}/{id}/{ACCEPTED_FILE}")
}

/// The key of the signature of the record at `key`.
pub fn signature_key(key: &str) -> String {
    format!("{key}{SIG_SUFFIX}")
}

/// The key of drill report `name` of `job`: `<job>/drills/<name>.json`.
pub fn drill_report_key(job: &str, name: &str) -> String {
    format!("{job}/{DRILLS_FOLDER}/{name}.json")
}

/// The ids of the complete backups of `job` found in a storage listing, oldest first.
pub fn complete_ids(objects: &[ObjectMeta], job: &str) -> Vec<String> {
    let prefix = job_prefix(job);
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

/// Whether something modified (or started) at `at` is old enough to be a leftover: always
/// when there is no limit (the job's lock is held), never when its time is unknown.
fn is_old(at: Option<DateTime<Utc>>, older_than: Option<DateTime<Utc>>) -> bool {
    match (older_than, at) {
        (None, _) => true,
        (Some(limit), Some(t)) => t < limit,
        (Some(_), None) => false,
    }
}

/// Keys in a listing of `job` that belong to no complete backup: backup folders without a
/// manifest, and stray files. Drill reports (`<job>/drills/...`) and the storage's own names
/// (`<job>/.<name>`) are kept. Keys modified after `older_than` are left alone (a run may
/// still be writing them).
pub fn incomplete_keys(
    objects: &[ObjectMeta],
    job: &str,
    older_than: Option<DateTime<Utc>>,
) -> Vec<String> {
    let complete = complete_ids(objects, job);
    let prefix = job_prefix(job);
    objects
        .iter()
        .filter(|o| {
            let Some(rest) = o.key.strip_prefix(&prefix) else {
                return false;
            };
            let top = rest.split('/').next().unwrap_or("");
            if top == DRILLS_FOLDER || top.starts_with('.') {
                return false;
            }
            if complete.binary_search(&top.to_string()).is_ok() {
                return false;
            }
            is_old(o.modified, older_than)
        })
        .map(|o| o.key.clone())
        .collect()
}

/// The jobs that have at least one complete backup, or a lease (a run writing the job,
/// maybe for the first time), in a listing of the whole storage.
pub fn jobs_in(objects: &[ObjectMeta]) -> Vec<String> {
    let mut jobs: Vec<String> = objects
        .iter()
        .filter_map(|o| {
            let mut parts = o.key.split('/');
            let (job, second) = (parts.next()?, parts.next()?);
            match parts.next() {
                // A job being written for the first time has only its lease.
                None => (second == LEASE_FILE).then(|| job.to_string()),
                Some(file) => {
                    (parts.next().is_none() && file == MANIFEST_FILE && is_backup_id(second))
                        .then(|| job.to_string())
                }
            }
        })
        .collect();
    jobs.sort();
    jobs.dedup();
    jobs
}

/// Remove what crashed runs of `job` left behind: objects that belong to no complete backup
/// ([`incomplete_keys`]), then the storage's unfinished writes (temp files, unfinished
/// multipart uploads). `locked` says the caller holds the job's lock, so nothing of the job
/// can be in progress and everything goes; without it only what is older than the storage's
/// [`Storage::leftover_age`] goes. Objects are deleted with the raw
/// [`Storage::delete_objects`]: a locked leftover on a versioned bucket gets a delete marker,
/// its data stays until its retention ends. Returns the keys removed.
pub async fn clean_leftovers(
    storage: &dyn Storage,
    job: &str,
    locked: bool,
) -> Result<Vec<String>> {
    clean_leftovers_at(storage, job, locked, Utc::now()).await
}

/// [`clean_leftovers`] with the current time given.
pub async fn clean_leftovers_at(
    storage: &dyn Storage,
    job: &str,
    locked: bool,
    now: DateTime<Utc>,
) -> Result<Vec<String>> {
    let older_than = older_than(storage, locked, now);
    let prefix = job_prefix(job);
    let objects = storage.list(&prefix).await?;
    let stale = incomplete_keys(&objects, job, older_than);
    let mut removed = storage.delete_objects(&stale).await?;
    for write in storage.unfinished(&prefix).await? {
        if is_old(write.started, older_than) {
            storage.discard(&write).await?;
            removed.push(write.key);
        }
    }
    Ok(removed)
}

/// The listing prefixes that cover the backup folders of `job` whose ids (their UTC start
/// time) fall between `from` and `to`: one per day (`<job>/YYYYMMDD`) over at most ten days,
/// else one per month (`<job>/YYYYMM`) over at most three months, else the whole job.
pub fn id_prefixes(job: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<String> {
    let (from, to) = (from.min(to).date_naive(), to.date_naive());
    let days = (to - from).num_days();
    let mut out = Vec::new();
    if days <= 10 {
        let mut day = from;
        while day <= to {
            out.push(format!("{job}/{}", day.format("%Y%m%d")));
            match day.succ_opt() {
                Some(d) => day = d,
                None => break,
            }
        }
    } else if days <= 92 {
        let mut day = from;
        while day <= to {
            let month = format!("{job}/{}", day.format("%Y%m"));
            if out.last() != Some(&month) {
                out.push(month);
            }
            match day.succ_opt() {
                Some(d) => day = d,
                None => break,
            }
        }
    } else {
        out.push(job_prefix(job));
    }
    out
}

/// Where the leftovers of crashed runs of `job` can be at `now`, when its newest complete
/// backup started at `newest` (`None`: no backup, look everywhere): the folders from
/// `newest - 2 x age - 1 day` on ([`id_prefixes`]). The run that wrote that backup cleaned
/// everything older that was old enough by then; a leftover still too young for it (`age`,
/// longer than any run) started at most `2 x age` before it. The margin of a day covers
/// clocks that disagree.
pub fn leftover_prefixes(
    job: &str,
    newest: Option<DateTime<Utc>>,
    age: std::time::Duration,
    now: DateTime<Utc>,
) -> Vec<String> {
    let back = chrono::Duration::from_std(age)
        .ok()
        .and_then(|a| a.checked_mul(2))
        .and_then(|a| a.checked_add(&chrono::Duration::days(1)));
    match (newest, back) {
        (Some(t), Some(back)) => match t.checked_sub_signed(back) {
            Some(from) => id_prefixes(job, from, now),
            None => vec![job_prefix(job)],
        },
        _ => vec![job_prefix(job)],
    }
}

/// [`clean_leftovers`] at a cost that does not grow with how many backups the job keeps:
/// what a backup runs first. The newest complete backup is found by listing the newest
/// folders ([`crate::catalog::recent_prefixes`]), then only the folders where leftovers can
/// be ([`leftover_prefixes`]) are listed and cleaned. Stray files outside backup folders are
/// left to `drkit prune`, which cleans the whole job.
pub async fn clean_recent_leftovers(
    storage: &dyn Storage,
    job: &str,
    locked: bool,
) -> Result<Vec<String>> {
    clean_recent_leftovers_at(storage, job, locked, Utc::now()).await
}

/// [`clean_recent_leftovers`] with the current time given.
pub async fn clean_recent_leftovers_at(
    storage: &dyn Storage,
    job: &str,
    locked: bool,
    now: DateTime<Utc>,
) -> Result<Vec<String>> {
    let mut newest = None;
    for prefix in crate::catalog::recent_prefixes(job, now) {
        let whole = prefix == job_prefix(job);
        if whole {
            break;
        }
        if let Some(id) = complete_ids(&storage.list(&prefix).await?, job).pop() {
            newest = id_time(&id);
            break;
        }
    }
    let prefixes = leftover_prefixes(job, newest, storage.leftover_age(), now);
    if prefixes == [job_prefix(job)] {
        return clean_leftovers_at(storage, job, locked, now).await;
    }
    let older_than = older_than(storage, locked, now);
    let mut removed = Vec::new();
    for prefix in prefixes {
        let objects = storage.list(&prefix).await?;
        let stale = incomplete_keys(&objects, job, older_than);
        removed.extend(storage.delete_objects(&stale).await?);
        for write in storage.unfinished(&prefix).await? {
            if is_old(write.started, older_than) {
                storage.discard(&write).await?;
                removed.push(write.key);
            }
        }
    }
    Ok(removed)
}

/// The start time a backup id names.
fn id_time(id: &str) -> Option<DateTime<Utc>> {
    chrono::NaiveDateTime::parse_from_str(id.get(..16)?, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|t| t.and_utc())
}

/// The age limit of leftovers: none with the job's lock, else the storage's `leftover_age`.
fn older_than(storage: &dyn Storage, locked: bool, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    (!locked).then(|| {
        chrono::Duration::from_std(storage.leftover_age())
            .ok()
            .and_then(|age| now.checked_sub_signed(age))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_in_a_listing() {
        let keys = [
            "app/20260301T020000Z-0a1b2c/manifest.json",
            "app/20260301T020000Z-0a1b2c/data.sqlite.zst",
            "first/.drkit.lease",
            "half/20260301T020000Z-0a1b2c/data.sqlite.zst",
            "odd/not-an-id/manifest.json",
            "deep/x/20260301T020000Z-0a1b2c/manifest.json",
            "lock/.drkit.lock",
            ".drkit.lease",
        ];
        let objects: Vec<ObjectMeta> = keys
            .iter()
            .map(|k| ObjectMeta {
                key: k.to_string(),
                size: 1,
                modified: None,
                etag: None,
            })
            .collect();
        assert_eq!(jobs_in(&objects), ["app", "first"]);
    }

    #[test]
    fn leftover_windows() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let now = t("2026-03-01T05:00:00Z");
        let h = |n: u64| std::time::Duration::from_secs(n * 3600);
        let cases: Vec<(Option<&str>, u64, Vec<&str>)> = vec![
            // a backup an hour ago, 12 h leftover age: from a day and a day before it
            (
                Some("2026-03-01T04:00:00Z"),
                12,
                vec!["db/20260227", "db/20260228", "db/20260301"],
            ),
            // 48 h: five days back, by day
            (
                Some("2026-03-01T04:00:00Z"),
                48,
                vec![
                    "db/20260224",
                    "db/20260225",
                    "db/20260226",
                    "db/20260227",
                    "db/20260228",
                    "db/20260301",
                ],
            ),
            // the newest backup a month ago: by month
            (
                Some("2026-02-01T00:00:00Z"),
                48,
                vec!["db/202601", "db/202602", "db/202603"],
            ),
            // long ago, or never: the whole job
            (Some("2025-06-01T00:00:00Z"), 48, vec!["db/"]),
            (None, 48, vec!["db/"]),
            // a newest backup in the future (a clock ahead) still reaches today
            (Some("2026-03-02T00:00:00Z"), 0, vec!["db/20260301"]),
        ];
        for (newest, age, want) in cases {
            assert_eq!(
                leftover_prefixes("db", newest.map(t), h(age), now),
                want,
                "{newest:?} {age}"
            );
        }
        assert_eq!(
            id_time("20260301T040506Z-abcdef"),
            Some(t("2026-03-01T04:05:06Z"))
        );
        assert_eq!(id_time("junk"), None);
    }

    #[test]
    fn keys_of_a_backup() {
        let (job, id) = ("db", "20260101T000000Z-aaaaaa");
        assert_eq!(job_prefix(job), "db/");
        assert_eq!(backup_folder(job, id), "db/20260101T000000Z-aaaaaa/");
        assert_eq!(
            data_key(job, id, "sqlite", ".zst"),
            "db/20260101T000000Z-aaaaaa/data.sqlite.zst"
        );
        assert_eq!(
            manifest_key(job, id),
            "db/20260101T000000Z-aaaaaa/manifest.json"
        );
        assert_eq!(
            signature_key(&manifest_key(job, id)),
            "db/20260101T000000Z-aaaaaa/manifest.json.sig"
        );
        assert_eq!(
            accepted_key(job, id),
            "db/20260101T000000Z-aaaaaa/accepted.json"
        );
        assert_eq!(
            drill_report_key(job, id),
            "db/drills/20260101T000000Z-aaaaaa.json"
        );
        for key in [
            data_key(job, id, "x", ""),
            manifest_key(job, id),
            accepted_key(job, id),
        ] {
            assert!(key.starts_with(&backup_folder(job, id)), "{key}");
        }
    }

    #[test]
    fn age_rule() {
        let now = Utc::now();
        let limit = Some(now - chrono::Duration::hours(1));
        assert!(is_old(None, None));
        assert!(is_old(Some(now), None));
        assert!(is_old(Some(now - chrono::Duration::hours(2)), limit));
        assert!(!is_old(Some(now), limit));
        assert!(!is_old(None, limit));
    }
}
