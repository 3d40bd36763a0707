//! The `drkit.toml` model: storages and jobs, `${VAR}` interpolation, validation.
//!
//! Driver settings (the `source` table of a job, a storage's table) are kept as TOML tables
//! here and read by `drkit-drivers`, which knows each driver's keys; everything else is
//! checked here. Unknown keys are errors everywhere.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::units::Span;
use crate::{one_line, Compression, Error, Result};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Named storages.
    #[serde(default)]
    pub storage: BTreeMap<String, DriverSpec>,
    /// Named jobs.
    #[serde(default)]
    pub job: BTreeMap<String, JobConfig>,
    /// Named notifiers (`[notify.NAME]`, docs/monitoring.md).
    #[serde(default)]
    pub notify: BTreeMap<String, crate::notify::NotifierConfig>,
    /// The local manifest cache (`[cache]`, docs/config.md).
    #[serde(default)]
    pub cache: crate::catalog::cache::CacheConfig,
    /// How `drkit daemon` runs the schedules (`[daemon]`, docs/deploy.md).
    #[serde(default)]
    pub daemon: DaemonConfig,
}

/// The `[daemon]` table: defaults for every job's schedule, and how many run at once.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// IANA time zone of the schedules (default UTC); a job's `timezone` overrides it.
    #[serde(default)]
    pub timezone: Option<String>,
    /// How many tasks (of different jobs) run at once; default 1. Two runs of one job never
    /// overlap, whatever this says.
    #[serde(default)]
    pub max_parallel: Option<usize>,
    /// Retry of failed runs for every job; a job's `retry` overrides it.
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    /// Delay every scheduled run by up to this much; a job's `jitter` overrides it.
    #[serde(default)]
    pub jitter: Option<Span>,
}

/// `retry = { attempts = 3, backoff = "1m" }`: run a scheduled task that failed for a
/// reason that may pass (a storage, a source or a program: exit 1) again, up to `attempts`
/// more times, waiting `backoff`, then twice as long each time. A retry never runs past the
/// task's next slot: the slot takes over.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// How many more times to try after a failure (0: never).
    pub attempts: u32,
    /// The wait before the first retry (default 1 minute); each next one waits twice as long.
    #[serde(default = "default_backoff")]
    pub backoff: Span,
}

fn default_backoff() -> Span {
    "1m".parse().expect("a valid span")
}

/// A driver's settings: its `type` and the rest of its table, read by the driver.
#[derive(Debug, Clone, PartialEq)]
pub struct DriverSpec {
    /// The `type` key: `local`, `s3`, `sqlite`, `postgres`, ...
    pub kind: String,
    /// Every other key of the table, already interpolated.
    pub settings: toml::Table,
}

impl<'de> Deserialize<'de> for DriverSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let mut settings = toml::Table::deserialize(d)?;
        match settings.remove("type") {
            Some(toml::Value::String(kind)) => Ok(DriverSpec { kind, settings }),
            Some(_) => Err(serde::de::Error::custom("`type` must be a string")),
            None => Err(serde::de::Error::custom("missing key `type`")),
        }
    }
}

impl DriverSpec {
    /// Deserialize the settings into a driver's own config type (which should deny unknown
    /// fields). Errors name `what`, e.g. `job.app-db.source`.
    pub fn parse<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T> {
        toml::Value::Table(self.settings.clone())
            .try_into()
            .map_err(|e: toml::de::Error| {
                Error::config(format!(
                    "{what} ({} source): {}",
                    self.kind,
                    one_line(e.message())
                ))
            })
    }
}

/// One job: what to back up, where, how often, how long to keep.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// The source to back up.
    pub source: DriverSpec,
    /// Names of the storages to write to.
    #[serde(deserialize_with = "one_or_many")]
    pub storage: Vec<String>,
    /// Cron schedule (5 fields, or 6 with seconds).
    #[serde(default)]
    pub schedule: Option<String>,
    /// Compression of the archive (default zstd).
    #[serde(default)]
    pub compression: Compression,
    /// Compression level (zstd 1-19, gzip 1-9).
    #[serde(default)]
    pub compression_level: Option<i32>,
    /// Retention policy.
    #[serde(default)]
    pub keep: Option<KeepPolicy>,
    /// Restore drills.
    #[serde(default)]
    pub drill: Option<DrillConfig>,
    /// Age after which `status` calls the newest backup stale (e.g. `26h`).
    #[serde(default, deserialize_with = "span_max_age")]
    pub max_age: Option<Span>,
    /// When a new backup is suspect, compared with the newest good one (see
    /// [`crate::suspect`]).
    #[serde(default)]
    pub suspect: crate::suspect::Thresholds,
    /// Sign manifests with a private key, and/or accept only those a public key signed.
    #[serde(default)]
    pub signing: Option<crate::signing::SigningConfig>,
    /// Encryption at rest with age (docs/security.md): recipients, and the identity file
    /// where this host restores.
    #[serde(default)]
    pub encryption: Option<crate::crypt::EncryptionConfig>,
    /// The notifiers this job tells (default: every `[notify.NAME]`; `[]`: none).
    #[serde(default)]
    pub notify: Option<Vec<String>>,
    /// Docker volumes whose data this job's backups protect: the data volume of a database
    /// server this job dumps (a logical dump is the consistent backup of a running server,
    /// a copy of its files is not). The guard accepts a fresh, verified backup of this job as
    /// the backup of each of these volumes (docs/docker.md).
    #[serde(default)]
    pub covers: Vec<String>,
    /// IANA time zone of `schedule` and `drill.schedule` (default: `[daemon] timezone`, UTC).
    #[serde(default)]
    pub timezone: Option<String>,
    /// Retry of the daemon's failed runs of this job (default: `[daemon] retry`, none).
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    /// Delay the daemon's scheduled runs of this job by up to this much (default: `[daemon]
    /// jitter`, none), so that hosts sharing a storage do not all start at once.
    #[serde(default)]
    pub jitter: Option<Span>,
}

impl JobConfig {
    /// The names of the notifiers this job tells, given every defined one (`all`).
    pub fn notifiers<'a>(
        &'a self,
        all: &'a BTreeMap<String, crate::notify::NotifierConfig>,
    ) -> Vec<&'a str> {
        match &self.notify {
            Some(names) => names.iter().map(String::as_str).collect(),
            None => all.keys().map(String::as_str).collect(),
        }
    }

    /// What readers of this job's storages trust: its signing key, or nothing (blind).
    pub fn trust(&self, job: &str) -> Result<crate::signing::Trust> {
        match &self.signing {
            Some(s) => s.trust(&format!("job.{job}.signing")),
            None => Ok(crate::signing::Trust::blind()),
        }
    }

    /// How the pipeline backs up this job: its compression, suspect thresholds, signer and
    /// trust.
    pub fn backup_options(&self, job: &str) -> Result<crate::pipeline::BackupOptions> {
        Ok(crate::pipeline::BackupOptions {
            compression: self.compression,
            level: self.compression_level,
            suspect: self.suspect.clone(),
            signer: self.signer(job)?.map(std::sync::Arc::new),
            trust: self.trust(job)?,
            keys: self.keys(job, None)?,
        })
    }

    /// The job's encryption keys (`None`: the job does not encrypt), with `identity`
    /// overriding its `identity_file`; with no `encryption` table, an `identity` alone still
    /// opens archives (a host rebuilt with only the key file).
    pub fn keys(
        &self,
        job: &str,
        identity: Option<&Path>,
    ) -> Result<Option<std::sync::Arc<crate::crypt::Keys>>> {
        let keys = match (&self.encryption, identity) {
            (Some(e), _) => {
                crate::crypt::Keys::load(e, &format!("job.{job}.encryption"), identity)?
            }
            (None, Some(path)) => crate::crypt::Keys::identity_only(path)?,
            (None, None) => return Ok(None),
        };
        for w in &keys.warnings {
            tracing::warn!(job, "{w}");
        }
        Ok(Some(std::sync::Arc::new(keys)))
    }

    /// The signer for new records of this job, when it has a key file.
    pub fn signer(&self, job: &str) -> Result<Option<crate::signing::Signer>> {
        match &self.signing {
            Some(s) => s.signer(&format!("job.{job}.signing")),
            None => Ok(None),
        }
    }
}

/// How many backups to keep, by slot (as restic's and rustic's `forget`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepPolicy {
    /// The newest N.
    pub last: Option<u32>,
    /// The newest of each of the last N hours that have backups.
    pub hourly: Option<u32>,
    /// ... days.
    pub daily: Option<u32>,
    /// ... ISO weeks.
    pub weekly: Option<u32>,
    /// ... months.
    pub monthly: Option<u32>,
    /// ... years.
    pub yearly: Option<u32>,
    /// Everything newer than this duration (e.g. `30d`).
    #[serde(default, deserialize_with = "span_within")]
    pub within: Option<Span>,
}

/// A duration field that names itself in its error (serde's messages carry no key path).
fn span_field<'de, D: serde::Deserializer<'de>>(
    d: D,
    key: &str,
) -> std::result::Result<Option<Span>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse()
        .map(Some)
        .map_err(|e: Error| serde::de::Error::custom(format!("{key}: {e}")))
}

fn span_max_age<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Span>, D::Error> {
    span_field(d, "max_age")
}

fn span_drill_max_age<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Span>, D::Error> {
    span_field(d, "drill.max_age")
}

fn span_rto<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<Span>, D::Error> {
    span_field(d, "drill.rto")
}

fn span_within<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Span>, D::Error> {
    span_field(d, "keep.within")
}

/// Restore drill settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillConfig {
    /// When to run the drill (cron).
    pub schedule: Option<String>,
    /// Age after which `status` calls the last drill overdue (`DRILL-STALE`); default: twice
    /// the period of `schedule` when it is set, else drills are shown but not required.
    #[serde(default, deserialize_with = "span_drill_max_age")]
    pub max_age: Option<Span>,
    /// The recovery time objective: a drill whose restore and checks take longer fails
    /// (exit 4), with the measured time.
    #[serde(default, deserialize_with = "span_rto")]
    pub rto: Option<Span>,
    /// A scratch server to restore into (PostgreSQL, MongoDB URL), instead of the source's.
    #[serde(default)]
    pub target: Option<String>,
    /// An image to start a throwaway server from (`postgres:16`, `mongo:7`), instead of the
    /// source's server.
    #[serde(default)]
    pub image: Option<String>,
    /// The operator's checks, run against the restored copy (see [`crate::drill::Check`]).
    #[serde(default)]
    pub checks: Vec<crate::drill::Check>,
}

impl DrillConfig {
    /// Where the drill restores: `target`, `image`, or beside the source.
    pub fn place(&self) -> crate::drill::Place {
        use crate::drill::Place;
        match (&self.target, &self.image) {
            (Some(url), _) => Place::Server(url.clone()),
            (None, Some(image)) => Place::Image(image.clone()),
            (None, None) => Place::Beside,
        }
    }

    /// How old the last drill may be at `now`: `max_age`, else twice the schedule's period
    /// (the time between its next two runs), else `None` (drills not required).
    pub fn limit(&self, now: chrono::DateTime<chrono::Utc>) -> Option<std::time::Duration> {
        if let Some(m) = &self.max_age {
            return Some(m.duration());
        }
        let schedule = crate::schedule::Schedule::parse(self.schedule.as_deref()?).ok()?;
        let one = std::slice::from_ref(&schedule);
        let (first, _) = crate::schedule::next_due(one, now)?;
        let (second, _) = crate::schedule::next_due(one, first)?;
        (second - first).to_std().ok().map(|p| p * 2)
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

impl Config {
    /// Read and parse a config file. `lookup` resolves `${VAR}`.
    pub fn load(path: &Path, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::config(format!(
                    "config file {} not found: pass --config FILE, set DRKIT_CONFIG, or create ./drkit.toml (see examples/)",
                    path.display()
                ))
            } else {
                Error::config(format!("cannot read config file {}: {e}", path.display()))
            }
        })?;
        Config::parse(&text, &path.display().to_string(), lookup)
    }

    /// Parse config text; `origin` names it in errors. `lookup` resolves `${VAR}`.
    pub fn parse(
        text: &str,
        origin: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let location = e
                .span()
                .map(|s| {
                    format!(
                        " line {}",
                        text[..s.start.min(text.len())].lines().count().max(1)
                    )
                })
                .unwrap_or_default();
            Error::config(format!("{origin}{location}: {}", one_line(e.message())))
        })?;
        for (name, s) in config.storage.iter_mut() {
            interpolate_table(&mut s.settings, &format!("storage.{name}"), lookup)?;
        }
        for (name, job) in config.job.iter_mut() {
            interpolate_table(
                &mut job.source.settings,
                &format!("job.{name}.source"),
                lookup,
            )?;
            if let Some(url) = job.drill.as_mut().and_then(|d| d.target.as_mut()) {
                *url = interpolate(url, &format!("job.{name}.drill.target"), lookup)?;
            }
        }
        for (name, n) in config.notify.iter_mut() {
            let what = format!("notify.{name}");
            for v in n.url.iter_mut().chain(n.secret.iter_mut()) {
                *v = interpolate(v, &what, lookup)?;
            }
            for v in n.headers.values_mut() {
                *v = interpolate(v, &format!("{what}.headers"), lookup)?;
            }
            for v in n.command.iter_mut().flatten() {
                *v = interpolate(v, &format!("{what}.command"), lookup)?;
            }
        }
        config.validate(origin)?;
        Ok(config)
    }

    /// Cross-checks that need the whole file.
    fn validate(&self, origin: &str) -> Result<()> {
        for (name, n) in &self.notify {
            check_name("notify", name, origin)?;
            n.validate(&format!("{origin}: notify.{name}"))?;
        }
        for (name, job) in &self.job {
            check_name("job", name, origin)?;
            for n in job.notify.iter().flatten() {
                if !self.notify.contains_key(n) {
                    let known: Vec<&str> = self.notify.keys().map(String::as_str).collect();
                    return Err(Error::config(format!(
                        "{origin}: job.{name}.notify names {n:?}, which is not defined (defined: {})",
                        if known.is_empty() { "none".to_string() } else { known.join(", ") }
                    )));
                }
            }
            if job.storage.is_empty() {
                return Err(Error::config(format!(
                    "{origin}: job.{name}.storage is empty: name at least one storage"
                )));
            }
            for s in &job.storage {
                if !self.storage.contains_key(s) {
                    let known: Vec<&str> = self.storage.keys().map(String::as_str).collect();
                    return Err(Error::config(format!(
                        "{origin}: job.{name} uses storage {s:?}, which is not defined (defined: {})",
                        if known.is_empty() { "none".to_string() } else { known.join(", ") }
                    )));
                }
            }
            if let Some(level) = job.compression_level {
                match job.compression.level_range() {
                    Some(r) if r.contains(&level) => {}
                    Some(r) => {
                        return Err(Error::config(format!(
                            "{origin}: job.{name}.compression_level = {level} is out of range for {}: use {} to {}",
                            job.compression, r.start(), r.end()
                        )))
                    }
                    None => {
                        return Err(Error::config(format!(
                            "{origin}: job.{name}.compression_level is set but compression is \"none\": remove one of them"
                        )))
                    }
                }
            }
            job.suspect
                .validate(&format!("{origin}: job.{name}.suspect"))?;
            if let Some(e) = &job.encryption {
                e.validate(&format!("{origin}: job.{name}.encryption"))?;
            }
            if let Some(DrillConfig {
                target: Some(_),
                image: Some(_),
                ..
            }) = &job.drill
            {
                return Err(Error::config(format!(
                    "{origin}: job.{name}.drill sets both target and image: a drill restores into one of them"
                )));
            }
            if let Some(signing) = &job.signing {
                if signing.key_file.is_none() && signing.public.is_none() {
                    return Err(Error::config(format!(
                        "{origin}: job.{name}.signing needs key_file (hosts that back up) or public (hosts that only read)"
                    )));
                }
                if let Some(p) = &signing.public {
                    crate::signing::parse_public(p)
                        .map_err(|e| e.context(format!("{origin}: job.{name}.signing.public")))?;
                }
            }
            let schedules = [
                ("schedule", job.schedule.as_ref()),
                (
                    "drill.schedule",
                    job.drill.as_ref().and_then(|d| d.schedule.as_ref()),
                ),
            ];
            for (key, expr) in schedules {
                if let Some(expr) = expr {
                    crate::schedule::Schedule::parse(expr)
                        .map_err(|e| e.context(format!("{origin}: job.{name}.{key}")))?;
                }
            }
            if let Some(bad) = job
                .covers
                .iter()
                .find(|v| v.trim().is_empty() || v.contains('/'))
            {
                return Err(Error::config(format!(
                    "{origin}: job.{name}.covers: {bad:?} is not a Docker volume name"
                )));
            }
            if let Some(tz) = &job.timezone {
                crate::schedule::zone(tz, &format!("{origin}: job.{name}.timezone"))?;
            }
        }
        for name in self.storage.keys() {
            check_name("storage", name, origin)?;
        }
        if let Some(tz) = &self.daemon.timezone {
            crate::schedule::zone(tz, &format!("{origin}: daemon.timezone"))?;
        }
        if self.daemon.max_parallel == Some(0) {
            return Err(Error::config(format!(
                "{origin}: daemon.max_parallel is 0: at least 1 task must be able to run"
            )));
        }
        Ok(())
    }

    /// The job named `name`, or a clear error listing the known jobs.
    pub fn job(&self, name: &str) -> Result<&JobConfig> {
        self.job.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.job.keys().map(String::as_str).collect();
            Error::config(format!(
                "no job named {name:?} in the config (jobs: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })
    }
}

/// Whether `name` may name a job, a storage or a notifier (letters, digits, `-`, `_`, `.`;
/// not starting with `.`; not `drills`). Job names found in a storage pass it too before
/// they are used.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name != "drills"
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn check_name(what: &str, name: &str, origin: &str) -> Result<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(Error::config(format!(
            "{origin}: {what} name {name:?} is not allowed: use letters, digits, '-', '_' and '.'"
        )))
    }
}

/// Replace `${VAR}` in every string of `table` (recursively). `$${` stands for a literal `${`.
/// An unset variable is a config error naming it and the key that uses it.
pub fn interpolate_table(
    table: &mut toml::Table,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<()> {
    for (k, v) in table.iter_mut() {
        interpolate_value(v, &format!("{path}.{k}"), lookup)?;
    }
    Ok(())
}

fn interpolate_value(
    v: &mut toml::Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<()> {
    match v {
        toml::Value::String(s) => *s = interpolate(s, path, lookup)?,
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_value(item, &format!("{path}[{i}]"), lookup)?;
            }
        }
        toml::Value::Table(t) => interpolate_table(t, path, lookup)?,
        _ => {}
    }
    Ok(())
}

/// Replace `${VAR}` in one string. `$${` stands for a literal `${`. `${file:PATH}` asks
/// `lookup` for `file:PATH` (the caller reads the file: Docker and Kubernetes secrets, the
/// credentials that never reached a cron job's environment).
pub fn interpolate(s: &str, path: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail.find('}').ok_or_else(|| {
                Error::config(format!(
                    "{path}: unclosed ${{ in value (write $${{ for a literal ${{)"
                ))
            })?;
            let name = &tail[..end];
            let file = name.strip_prefix("file:");
            let valid = match file {
                Some(p) => !p.is_empty(),
                None => {
                    !name.is_empty()
                        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        && !name.starts_with(|c: char| c.is_ascii_digit())
                }
            };
            if !valid {
                return Err(Error::config(format!(
                    "{path}: ${{{name}}} is not a valid variable name"
                )));
            }
            let value = lookup(name).ok_or_else(|| match file {
                Some(p) => Error::config(format!(
                    "{path} uses ${{file:{p}}}, which cannot be read (missing, not readable by this user, over 64 KiB or not UTF-8)"
                )),
                None => Error::config(format!(
                    "{path} uses ${{{name}}}, which is not set: export it or load it with --env-file"
                )),
            })?;
            out.push_str(&value);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Parse an env file: `KEY=VALUE` lines, `#` comments, optional `export `, optional single
/// or double quotes around the value. `origin` names the file in errors.
pub fn parse_env_file(text: &str, origin: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            return Err(Error::config(format!(
                "{origin} line {}: expected KEY=VALUE",
                i + 1
            )));
        };
        let k = k.trim();
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Error::config(format!(
                "{origin} line {}: {k:?} is not a variable name",
                i + 1
            )));
        }
        let v = v.trim();
        let v = if v.len() >= 2
            && ((v.starts_with('"') && v.ends_with('"'))
                || (v.starts_with('\'') && v.ends_with('\'')))
        {
            &v[1..v.len() - 1]
        } else {
            v
        };
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

pub use crate::units::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "DB_URL" => Some("postgres://u:p@h/db".into()),
            "EMPTY" => Some(String::new()),
            "file:/run/secrets/pw" => Some("s3cret".into()),
            _ => None,
        }
    }

    const GOOD: &str = r#"
[storage.local]
type = "local"
path = "/tmp/x"

[job.app]
source = { type = "postgres", url = "${DB_URL}" }
storage = ["local"]
schedule = "0 */6 * * *"
keep = { last = 3, daily = 7 }
drill = { schedule = "0 4 1 * *" }

[job.files]
source = { type = "sqlite", path = "/srv/x.db" }
storage = "local"
compression = "gzip"
"#;

    #[test]
    fn parses_and_interpolates() {
        let c = Config::parse(GOOD, "drkit.toml", &env).unwrap();
        assert_eq!(c.storage["local"].kind, "local");
        let app = c.job("app").unwrap();
        assert_eq!(
            app.source.settings["url"].as_str(),
            Some("postgres://u:p@h/db")
        );
        assert_eq!(app.keep.as_ref().unwrap().last, Some(3));
        assert_eq!(c.job("files").unwrap().storage, vec!["local".to_string()]);
        assert_eq!(c.job("files").unwrap().compression, Compression::Gzip);
    }

    #[test]
    fn errors_table() {
        let cases: &[(&str, &str)] = &[
            ("[job.a]\nsource = { type = \"sqlite\" }\nstorage = [\"x\"]\nfoo = 1\n", "unknown field `foo`"),
            ("[storage.l]\ntype = \"local\"\n[job.a]\nsource = { type = \"sqlite\", path = \"${NOPE}\" }\nstorage = [\"l\"]\n", "${NOPE}, which is not set"),
            ("[job.a]\nsource = { type = \"sqlite\" }\nstorage = [\"x\"]\n", "storage \"x\", which is not defined"),
            ("[storage.l]\ntype = \"local\"\n[job.a]\nsource = { type = \"sqlite\" }\nstorage = [\"l\"]\nencryption = { recipients = [] }\n", "job.a.encryption: no recipient"),
            ("[storage.l]\ntype = \"local\"\n[job.a]\nsource = { type = \"sqlite\" }\nstorage = [\"l\"]\nencryption = { recipients = [\"age1nope\"] }\n", "not an age recipient"),
            ("[storage.l]\ntype = \"local\"\n[job.a]\nsource = { type = \"sqlite\" }\nstorage = [\"l\"]\nencryption = { recipient = \"x\" }\n", "unknown field `recipient`"),
            ("[storage.l]\ntype = \"local\"\n[job.a]\nsource = { type = \"sqlite\" }\nstorage = [\"l\"]\nnotify = [\"ops\"]\n", "notify names \"ops\", which is not defined"),
            ("[notify.ops]\ntype = \"webhook\"\n", "`url` must be"),
            ("[storage.l]\ntype = \"local\"\n[job.a]\nsource = { path = \"x\" }\nstorage = [\"l\"]\n", "missing key `type`"),
            ("[storage.l]\ntype = \"local\"\n[job.a]\nsource = { type = \"sqlite\" }\nstorage = [\"l\"]\nschedule = \"nope\"\n", "job.a.schedule"),
            ("[storage.l]\ntype = \"local\"\n[job.a]\nsource = { type = \"sqlite\" }\nstorage = [\"l\"]\nmax_age = \"3 days\"\n", "max_age"),
            ("[storage.l]\ntype = \"local\"\n[job.\"a/b\"]\nsource = { type = \"sqlite\" }\nstorage = [\"l\"]\n", "not allowed"),
            ("[storage.l\n", "drkit.toml line 1"),
            ("[storage.l]\ntype = \"local\"\n[job.a]\nsource = { type = \"sqlite\" }\nstorage = [\"l\"]\ncompression = \"lz4\"\n", "unknown variant `lz4`"),
            ("[storage.l]\ntype = \"local\"\n[job.a]\nsource = { type = \"sqlite\" }\nstorage = [\"l\"]\ncompression_level = 22\n", "compression_level = 22 is out of range for zstd: use 1 to 19"),
            ("[storage.l]\ntype = \"local\"\n[job.a]\nsource = { type = \"sqlite\" }\nstorage = [\"l\"]\ncompression_level = 0\n", "out of range for zstd"),
            ("[storage.l]\ntype = \"local\"\n[job.a]\nsource = { type = \"sqlite\" }\nstorage = [\"l\"]\ncompression = \"gzip\"\ncompression_level = 10\n", "out of range for gzip: use 1 to 9"),
            ("[storage.l]\ntype = \"local\"\n[job.a]\nsource = { type = \"sqlite\" }\nstorage = [\"l\"]\ncompression = \"none\"\ncompression_level = 3\n", "compression is \"none\""),
            ("[storage.l]\ntype = \"local\"\n[job.a]\nsource = { type = \"sqlite\" }\nstorage = [\"l\"]\nsuspect = { shrink = 2 }\n", "job.a.suspect.shrink = 2"),
            ("[storage.l]\ntype = \"local\"\n[job.a]\nsource = { type = \"sqlite\" }\nstorage = [\"l\"]\nsuspect = { min_size = \"big\" }\n", "job.a.suspect.min_size"),
            ("[storage.l]\ntype = \"local\"\n[job.a]\nsource = { type = \"sqlite\" }\nstorage = [\"l\"]\nsuspect = { shrnk = 0.5 }\n", "unknown field `shrnk`"),
            ("[storage.l]\ntype = \"local\"\n[job.a]\nsource = { type = \"sqlite\" }\nstorage = [\"l\"]\nsigning = {}\n", "needs key_file"),
            ("[storage.l]\ntype = \"local\"\n[job.a]\nsource = { type = \"sqlite\" }\nstorage = [\"l\"]\nsigning = { public = \"AAAA\" }\n", "signing.public"),
        ];
        for (text, want) in cases {
            let err = Config::parse(text, "drkit.toml", &env).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Config, "{text}");
            let msg = err.to_string();
            assert!(msg.contains(want), "{text:?}: got {msg:?}, want {want:?}");
            assert!(!msg.contains('\n'), "multi-line error: {msg:?}");
        }
    }

    #[test]
    fn interpolate_table_cases() {
        let cases = [
            ("plain", Ok("plain")),
            ("${DB_URL}", Ok("postgres://u:p@h/db")),
            ("a${EMPTY}b", Ok("ab")),
            ("cost $5", Ok("cost $5")),
            ("$${DB_URL}", Ok("${DB_URL}")),
            ("${UNSET}", Err("UNSET")),
            ("${unclosed", Err("unclosed")),
            ("${1X}", Err("not a valid")),
            (
                "postgres://u:${file:/run/secrets/pw}@h",
                Ok("postgres://u:s3cret@h"),
            ),
            ("${file:/nope}", Err("${file:/nope}, which cannot be read")),
            ("${file:}", Err("not a valid")),
        ];
        for (input, want) in cases {
            let got = interpolate(input, "k", &env);
            match want {
                Ok(w) => assert_eq!(got.unwrap(), w, "{input}"),
                Err(w) => assert!(got.unwrap_err().to_string().contains(w), "{input}"),
            }
        }
    }

    #[test]
    fn env_file() {
        let text = "# c\nA=1\nexport B = \"two words\"\n\nC='x=y'\n";
        let got = parse_env_file(text, ".env").unwrap();
        assert_eq!(
            got,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "x=y".into())
            ]
        );
        assert!(parse_env_file("JUNK\n", ".env")
            .unwrap_err()
            .to_string()
            .contains(".env line 1"));
    }

    #[test]
    fn durations() {
        let cases = [
            ("90s", Some(90)),
            ("15m", Some(900)),
            ("6h", Some(21600)),
            ("7d", Some(604800)),
            ("1w", Some(604800)),
            ("7", None),
            ("d", None),
            ("1y", None),
            ("-1d", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_duration(s).ok().map(|d| d.as_secs()), want, "{s}");
        }
    }
}
