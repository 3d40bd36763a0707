//! Restore drills, the pure part: where a drill restores ([`Place`]), the operator's checks
//! ([`Check`], judged by [`judge`]), and the names of scratch places ([`ScratchName`]), whose
//! time tells a later drill or `doctor` that one was left behind ([`is_stale`]).
//!
//! The drivers create, query and remove scratch places; the pipeline
//! (`pipeline::drill`) runs a drill and keeps its report.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Where a drill restores (`[job.X.drill]`: `target`, `image`, or neither).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Place {
    /// Beside the source: scratch databases on the source server, a scratch volume, a temp
    /// file. The drill loads the source's server.
    #[default]
    Beside,
    /// A scratch server the operator names (`target = URL`).
    Server(String),
    /// A throwaway container of this image (`image = "postgres:16"`), removed after.
    Image(String),
}

impl Place {
    /// How a report names the place, without credentials.
    pub fn describe(&self) -> String {
        match self {
            Place::Beside => "beside the source".into(),
            Place::Server(url) => format!("server {}", crate::redact_url(url)),
            Place::Image(image) => format!("throwaway container of image {image}"),
        }
    }
}

/// A scratch destination a driver prepared for a drill.
#[derive(Debug, Clone, Default)]
pub struct Scratch {
    /// Where the restore goes, as [`crate::RestoreOptions::to`] (may hold credentials).
    pub to: String,
    /// How the report names it (no credentials).
    pub shown: String,
    /// What else the driver must remove afterwards (a container, a network), in its own
    /// words; core only hands it back to [`crate::Source::drill_cleanup`].
    pub resources: Vec<String>,
    /// Lines for the operator (e.g. that the drill loads the source server).
    pub notes: Vec<String>,
}

/// How old a scratch place may be before a drill or `doctor` takes it for one a killed drill
/// left behind, and removes it. No drill runs for a day.
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The prefix of every scratch place's name (databases use `_`, volumes and folders `-`).
pub const SCRATCH_PREFIX: &str = "drkit_drill_";

/// The name of a drill's scratch place: prefix, job, start time, and a random tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScratchName {
    /// The job (shortened in [`ScratchName::render`] to fit name limits).
    pub job: String,
    /// When the drill started.
    pub at: DateTime<Utc>,
    /// Random, so two drills never share a place.
    pub tag: u32,
}

impl ScratchName {
    /// `drkit_drill_<job>_<YYYYMMDDTHHMMSS>_<8 hex>`, with `sep` for `_`, and the job cut
    /// (and anything but ASCII letters, digits, `-` and `_` replaced by `sep`) so that the
    /// whole stays within `max_len` bytes (PostgreSQL allows 63, MongoDB 63).
    pub fn render(&self, sep: char, max_len: usize) -> String {
        let prefix: String = SCRATCH_PREFIX
            .chars()
            .map(|c| if c == '_' { sep } else { c })
            .collect();
        let tail = format!(
            "{sep}{}{sep}{:08x}",
            self.at.format("%Y%m%dT%H%M%S"),
            self.tag
        );
        let room = max_len.saturating_sub(prefix.len() + tail.len());
        let job: String = self
            .job
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    sep
                }
            })
            .take(room)
            .collect();
        format!("{prefix}{job}{tail}")
    }
}

/// When the scratch place named `name` was made, if it is a drkit scratch name (any
/// separator): read from its time field, so that a name does not need a catalog. A driver
/// may add a suffix (PostgreSQL and MongoDB add the archived database's name): the last
/// time-and-tag pair of fields counts.
pub fn scratch_time(name: &str) -> Option<DateTime<Utc>> {
    let rest = name.strip_prefix("drkit")?;
    let sep = rest.chars().next()?;
    let rest = rest[sep.len_utf8()..].strip_prefix("drill")?;
    let rest = rest.strip_prefix(sep)?;
    let fields: Vec<&str> = rest.split(sep).collect();
    fields.windows(2).rev().find_map(|w| {
        let (time, tag) = (w[0], w[1]);
        if tag.len() != 8 || !tag.bytes().all(|b| b.is_ascii_hexdigit()) || time.len() != 15 {
            return None;
        }
        let t = NaiveDateTime::parse_from_str(&time.to_ascii_uppercase(), "%Y%m%dT%H%M%S").ok()?;
        Some(t.and_utc())
    })
}

/// Whether the scratch place `name` was left by a drill that ended more than
/// [`STALE_AFTER`] before `now` (a drill killed before it could clean up). Names that are not
/// drkit scratch names are never stale.
pub fn is_stale(name: &str, now: DateTime<Utc>) -> bool {
    scratch_time(name).is_some_and(|t| (now - t).to_std().is_ok_and(|age| age > STALE_AFTER))
}

/// What an operator's check asks of the restored copy.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Query {
    /// SQL (PostgreSQL, SQLite): the first column of the first row is the value.
    Sql(String),
    /// MongoDB: the number of documents of `collection` matching `filter`. A name
    /// `db.collection` picks the database when the backup holds several.
    Count {
        /// The collection.
        collection: String,
        /// The filter (a MongoDB query document), `{}` for all.
        filter: serde_json::Value,
    },
    /// Docker volume: the size in bytes of a path in the restored volume (`null` when it
    /// does not exist; a folder's size is the sum of its files).
    Path(String),
}

impl std::fmt::Display for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Query::Sql(sql) => write!(f, "sql {sql:?}"),
            Query::Count { collection, filter } => write!(f, "count {collection} {filter}"),
            Query::Path(p) => write!(f, "path {p:?}"),
        }
    }
}

/// What the value of a check must be. At least one bound is set ([`Check`]'s parser makes
/// sure), except for a path check, which then only asks that the path exists.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Expect {
    /// At least this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// At most this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Exactly this (a number, text or boolean).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub equals: Option<serde_json::Value>,
}

/// One operator check of `[job.X.drill] checks = [...]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// A name for reports: `name = ...`, else the query.
    pub name: String,
    /// What to ask.
    pub query: Query,
    /// What the answer must be.
    pub expect: Expect,
}

/// A check as written in the config file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    name: Option<String>,
    sql: Option<String>,
    collection: Option<String>,
    filter: Option<toml::Table>,
    path: Option<String>,
    min: Option<f64>,
    max: Option<f64>,
    min_size: Option<toml::Value>,
    equals: Option<toml::Value>,
}

impl<'de> Deserialize<'de> for Check {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Check, D::Error> {
        let raw = RawCheck::deserialize(d)?;
        Check::from_raw(raw).map_err(|e| serde::de::Error::custom(e.message().to_string()))
    }
}

impl Check {
    fn from_raw(raw: RawCheck) -> Result<Check> {
        let bad = |why: &str| Error::config(format!("drill.checks: {why}"));
        let query = match (raw.sql, raw.collection, raw.path) {
            (Some(sql), None, None) if raw.filter.is_none() && raw.min_size.is_none() => {
                Query::Sql(sql)
            }
            (None, Some(collection), None) if raw.min_size.is_none() => Query::Count {
                collection,
                filter: serde_json::to_value(raw.filter.unwrap_or_default())
                    .map_err(|e| bad(&format!("the filter cannot be read ({e})")))?,
            },
            (None, None, Some(path)) if raw.filter.is_none() && raw.equals.is_none() => {
                Query::Path(path)
            }
            _ => {
                return Err(bad(
                    "each check has one of sql = \"...\" (with min, max or equals), \
                     collection = \"...\" (with filter, and min, max or equals), or \
                     path = \"...\" (with min_size)",
                ))
            }
        };
        let min_size = raw
            .min_size
            .map(|v| match v {
                toml::Value::Integer(n) if n >= 0 => Ok(n as f64),
                toml::Value::String(s) => crate::units::parse_size(&s).map(|n| n as f64),
                _ => Err(bad("min_size is a size: bytes, or text like \"1MiB\"")),
            })
            .transpose()?;
        let equals = raw
            .equals
            .map(|v| serde_json::to_value(v).map_err(|e| bad(&format!("equals: {e}"))))
            .transpose()?;
        let expect = Expect {
            min: raw.min.or(min_size),
            max: raw.max,
            equals,
        };
        let is_path = matches!(query, Query::Path(_));
        if !is_path && expect.min.is_none() && expect.max.is_none() && expect.equals.is_none() {
            return Err(bad(&format!(
                "the check {query} has no expected value: add min, max or equals"
            )));
        }
        Ok(Check {
            name: raw.name.unwrap_or_else(|| query.to_string()),
            query,
            expect,
        })
    }
}

/// A check's outcome, as kept in the drill report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// The check's name.
    pub name: String,
    /// The value found (`null` when there was none, e.g. a missing path).
    pub value: serde_json::Value,
    /// Whether it met the expectation.
    pub ok: bool,
    /// Why not, or why it could not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// Judge `value` against `expect`: `None` when it passes, else why not. A bound on a value
/// that is not a number (text, `null`) fails; `equals` compares numbers by value and
/// anything else exactly.
pub fn judge(value: &serde_json::Value, expect: &Expect) -> Option<String> {
    let number = value
        .as_f64()
        .or_else(|| value.as_str().and_then(|s| s.trim().parse::<f64>().ok()));
    if value.is_null() {
        return Some("no value (the query found nothing)".into());
    }
    if let Some(want) = &expect.equals {
        let same = match (want.as_f64(), number) {
            (Some(w), Some(n)) => w == n,
            _ => want == value,
        };
        if !same {
            return Some(format!("{value} is not {want}"));
        }
    }
    if expect.min.is_some() || expect.max.is_some() {
        let Some(n) = number else {
            return Some(format!("{value} is not a number"));
        };
        if let Some(min) = expect.min.filter(|m| n < *m) {
            return Some(format!("{value} is below the minimum {min}"));
        }
        if let Some(max) = expect.max.filter(|m| n > *m) {
            return Some(format!("{value} is above the maximum {max}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn check(text: &str) -> Result<Check> {
        #[derive(Deserialize)]
        struct T {
            check: Check,
        }
        toml::from_str::<T>(&format!("check = {text}"))
            .map(|t| t.check)
            .map_err(|e| Error::config(e.message().to_string()))
    }

    #[test]
    fn checks_parse() {
        let c = check(r#"{ sql = "select 1", max = 0 }"#).unwrap();
        assert_eq!(c.query, Query::Sql("select 1".into()));
        assert_eq!(c.expect.max, Some(0.0));
        assert_eq!(c.name, "sql \"select 1\"");
        let c = check(
            r#"{ name = "active", collection = "users", filter = { active = true }, min = 1 }"#,
        )
        .unwrap();
        assert_eq!(
            c.query,
            Query::Count {
                collection: "users".into(),
                filter: json!({"active": true})
            }
        );
        assert_eq!(c.name, "active");
        let c = check(r#"{ path = "data/app.db", min_size = "1KiB" }"#).unwrap();
        assert_eq!(c.expect.min, Some(1024.0));
        let c = check(r#"{ path = "x" }"#).unwrap();
        assert_eq!(c.expect, Expect::default());
        let c = check(r#"{ sql = "select 'a'", equals = "a" }"#).unwrap();
        assert_eq!(c.expect.equals, Some(json!("a")));
        for bad in [
            r#"{ sql = "select 1" }"#,
            r#"{ sql = "select 1", collection = "c", min = 1 }"#,
            r#"{ path = "x", equals = 3 }"#,
            r#"{ sql = "select 1", min_size = 3 }"#,
            r#"{ min = 1 }"#,
            r#"{ sql = "x", min = 1, maximum = 3 }"#,
            r#"{ path = "x", min_size = true }"#,
        ] {
            assert!(check(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn judging() {
        let e = |min, max, eq: Option<serde_json::Value>| Expect {
            min,
            max,
            equals: eq,
        };
        let cases: Vec<(serde_json::Value, Expect, bool)> = vec![
            (json!(0), e(None, Some(0.0), None), true),
            (json!(3), e(None, Some(0.0), None), false),
            (json!(3), e(Some(1.0), None, None), true),
            (json!(0), e(Some(1.0), None, None), false),
            (json!("12"), e(Some(1.0), Some(20.0), None), true),
            (json!("abc"), e(Some(1.0), None, None), false),
            (json!(null), e(Some(0.0), None, None), false),
            (json!(null), Expect::default(), false),
            (json!(5), Expect::default(), true),
            (json!(5), e(None, None, Some(json!(5.0))), true),
            (json!("5"), e(None, None, Some(json!(5))), true),
            (json!("NL"), e(None, None, Some(json!("NL"))), true),
            (json!("NL"), e(None, None, Some(json!("nl"))), false),
            (json!(true), e(None, None, Some(json!(true))), true),
            (json!(false), e(None, None, Some(json!(true))), false),
        ];
        for (value, expect, ok) in cases {
            assert_eq!(
                judge(&value, &expect).is_none(),
                ok,
                "{value} against {expect:?}"
            );
        }
    }

    #[test]
    fn scratch_names() {
        let at = Utc.with_ymd_and_hms(2026, 12, 3, 4, 5, 6).unwrap();
        let n = ScratchName {
            job: "App.DB prod".into(),
            at,
            tag: 0xab,
        };
        assert_eq!(
            n.render('_', 63),
            "drkit_drill_app_db_prod_20261203T040506_000000ab"
        );
        assert_eq!(
            n.render('-', 63),
            "drkit-drill-app-db-prod-20261203T040506-000000ab"
        );
        let long = ScratchName {
            job: "x".repeat(100),
            at,
            tag: 1,
        };
        assert_eq!(long.render('_', 63).len(), 63);
        for sep in ['_', '-'] {
            let name = n.render(sep, 63);
            assert_eq!(scratch_time(&name), Some(at), "{name}");
            assert!(!is_stale(&name, at + chrono::Duration::hours(23)));
            assert!(is_stale(&name, at + chrono::Duration::hours(25)));
            let suffixed = format!("{name}{sep}appdb");
            assert_eq!(scratch_time(&suffixed), Some(at), "{suffixed}");
        }
        for other in [
            "app",
            "drkit_drill_",
            "drkit_drill_deadbeef",
            "drkit_drill_job_2026_000000ab",
            "drkit_drill_job_20261203T040506_xyz",
            "drkit-backup-job-20261203T040506-000000ab",
        ] {
            assert_eq!(scratch_time(other), None, "{other}");
            assert!(!is_stale(other, at + chrono::Duration::days(400)));
        }
    }
}
