//! Suspect backups: a new backup compared with the newest good one of the same job, when it is
//! written. A pure function of the two backups' facts and the job's thresholds.
//!
//! The incidents behind drkit are "backups" of 108 bytes and tar files of 4 KB that nobody
//! noticed until the good copies had rotated out. A backup that fails one of these checks is
//! still a complete backup (it can be verified and restored), but it is marked `suspect` in
//! its manifest, `drkit backup` exits 5, retention never lets it displace a good backup, and
//! restore and drill skip it unless asked for it by id. `drkit accept` marks it good after a
//! deliberate purge.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::units::{human_bytes, parse_size};
use crate::{Error, Result};

/// What a driver counts in a dump: rows, documents or files, in total and per part (a table,
/// a collection). Read from a manifest's `stats` by [`crate::Source::measure`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measure {
    /// What is counted: `rows`, `documents`, `files`.
    pub unit: &'static str,
    /// What a part is: `table`, `collection`.
    pub part: &'static str,
    /// The total count, `None` when the driver does not know it (estimates missing).
    pub total: Option<u64>,
    /// The count per part (`public.orders`, `shop.carts`...). Empty when the driver has no
    /// parts (volumes).
    pub parts: BTreeMap<String, u64>,
    /// Whether a raw dump under [`Thresholds::min_size`] cannot be a real one for this
    /// driver (a SQLite file, a pg_dump archive, a tar).
    pub size_floor: bool,
}

/// The facts of one backup the checks compare: its raw size and what it counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// Size of the dump before compression.
    pub raw_size: u64,
    /// What the driver counts.
    pub measure: Measure,
}

/// A job's suspect thresholds (`[job.NAME] suspect = { ... }`); `0` or `false` disables one.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// A source that holds no data (0 rows, 0 documents, 0 files) is suspect.
    pub empty: bool,
    /// Suspect when the raw size, or the total count, is below `shrink` x the previous good
    /// backup's (`0.5`: it lost half).
    pub shrink: f64,
    /// Suspect when a table or collection that held at least this many rows or documents in
    /// the previous good backup is gone or empty.
    pub vanished_min: u64,
    /// Suspect when the raw size is under this (`1KiB`), for drivers where that cannot be a
    /// real dump. A size: `512`, `1KiB`, `4MiB`, `1GiB`, `0` disables.
    pub min_size: String,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            empty: true,
            shrink: 0.5,
            vanished_min: 100,
            min_size: "1KiB".into(),
        }
    }
}

impl Thresholds {
    /// Check the values; `what` names the table in errors (`job.app.suspect`).
    pub fn validate(&self, what: &str) -> Result<()> {
        if !(0.0..=1.0).contains(&self.shrink) || self.shrink.is_nan() {
            return Err(Error::config(format!(
                "{what}.shrink = {} is out of range: use a fraction from 0 (off) to 1, e.g. 0.5",
                self.shrink
            )));
        }
        parse_size(&self.min_size).map_err(|e| e.context(format!("{what}.min_size")))?;
        Ok(())
    }
}

fn percent(part: u64, whole: u64) -> String {
    format!("{:.1}%", part as f64 * 100.0 / whole.max(1) as f64)
}

/// Why `new` looks wrong compared with `previous_good` (the newest good backup of the job,
/// `None` for the first one). Each reason is a sentence with the numbers; empty when the
/// backup looks right. `min_size` must be valid (see [`Thresholds::validate`]).
pub fn assess(new: &Facts, previous_good: Option<&Facts>, t: &Thresholds) -> Vec<String> {
    let mut reasons = Vec::new();
    let m = &new.measure;
    if t.empty && m.total == Some(0) {
        reasons.push(format!(
            "the source holds no data (0 {} in every {})",
            m.unit,
            if m.part.is_empty() { "part" } else { m.part }
        ));
    }
    let min_size = parse_size(&t.min_size).unwrap_or(0);
    if m.size_floor && min_size > 0 && new.raw_size < min_size {
        reasons.push(format!(
            "raw size {} is under the minimum of {} for a real dump",
            human_bytes(new.raw_size),
            human_bytes(min_size)
        ));
    }
    let Some(prev) = previous_good else {
        return reasons;
    };
    if t.shrink > 0.0 && (new.raw_size as f64) < t.shrink * prev.raw_size as f64 {
        reasons.push(format!(
            "raw size {} is {} of the previous good backup's {}",
            human_bytes(new.raw_size),
            percent(new.raw_size, prev.raw_size),
            human_bytes(prev.raw_size)
        ));
    }
    if let (Some(now), Some(before)) = (m.total, prev.measure.total) {
        if t.shrink > 0.0 && (now as f64) < t.shrink * before as f64 {
            reasons.push(format!(
                "{now} {} is {} of the previous good backup's {before}",
                m.unit,
                percent(now, before)
            ));
        }
    }
    if t.vanished_min > 0 {
        let mut gone = Vec::new();
        for (name, &before) in &prev.measure.parts {
            if before < t.vanished_min {
                continue;
            }
            match m.parts.get(name) {
                None => gone.push(format!("{name} (had {before}, now gone)")),
                Some(0) => gone.push(format!("{name} (had {before}, now empty)")),
                Some(_) => {}
            }
        }
        if !gone.is_empty() {
            let what = if prev.measure.part.is_empty() {
                "part"
            } else {
                prev.measure.part
            };
            let shown: Vec<&str> = gone.iter().take(5).map(String::as_str).collect();
            reasons.push(format!(
                "{} {what}(s) with at least {} {} vanished: {}{}",
                gone.len(),
                t.vanished_min,
                prev.measure.unit,
                shown.join(", "),
                if gone.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                }
            ));
        }
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(raw: u64, total: Option<u64>, parts: &[(&str, u64)]) -> Facts {
        Facts {
            raw_size: raw,
            measure: Measure {
                unit: "rows",
                part: "table",
                total,
                parts: parts.iter().map(|(n, c)| (n.to_string(), *c)).collect(),
                size_floor: true,
            },
        }
    }

    #[test]
    fn assess_table() {
        let good = facts(2_200_000, Some(5000), &[("orders", 4000), ("tiny", 50)]);
        let t = Thresholds::default();
        // (new, previous, thresholds, expected reason fragments; empty = not suspect)
        let off = |f: fn(&mut Thresholds)| {
            let mut t = Thresholds::default();
            f(&mut t);
            t
        };
        let cases: Vec<(Facts, Option<&Facts>, Thresholds, Vec<&str>)> = vec![
            (good.clone(), Some(&good), t.clone(), vec![]),
            (good.clone(), None, t.clone(), vec![]),
            // the sequence: 2.1 MiB, then 8 KiB of an emptied database
            (
                facts(8192, Some(0), &[("orders", 0), ("tiny", 0)]),
                Some(&good),
                t.clone(),
                vec![
                    "holds no data (0 rows in every table)",
                    "raw size 8.0 KiB is 0.4% of the previous good backup's 2.1 MiB",
                    "0 rows is 0.0% of the previous good backup's 5000",
                    "1 table(s) with at least 100 rows vanished: orders (had 4000, now empty)",
                ],
            ),
            // shrunk to 20%
            (
                facts(440_000, Some(1000), &[("orders", 950), ("tiny", 50)]),
                Some(&good),
                t.clone(),
                vec!["is 20.0% of", "1000 rows is 20.0% of"],
            ),
            // a table dropped
            (
                facts(2_100_000, Some(4900), &[("tiny", 50), ("new", 4850)]),
                Some(&good),
                t.clone(),
                vec!["orders (had 4000, now gone)"],
            ),
            // tiny table vanishing is below vanished_min
            (
                facts(2_200_000, Some(4950), &[("orders", 4950)]),
                Some(&good),
                t.clone(),
                vec![],
            ),
            // the 108-byte backup, first of its job
            (
                facts(108, Some(3), &[("a", 3)]),
                None,
                t.clone(),
                vec!["raw size 108 B is under the minimum of 1.0 KiB"],
            ),
            // every check disabled
            (
                facts(108, Some(0), &[]),
                Some(&good),
                off(|t| {
                    t.empty = false;
                    t.shrink = 0.0;
                    t.vanished_min = 0;
                    t.min_size = "0".into();
                }),
                vec![],
            ),
            // just above the shrink line
            (
                facts(1_100_001, Some(2501), &[("orders", 2000)]),
                Some(&good),
                t.clone(),
                vec![],
            ),
            // unknown totals are not compared
            (
                facts(2_200_000, None, &[("orders", 4000)]),
                Some(&good),
                t.clone(),
                vec![],
            ),
        ];
        for (i, (new, prev, t, want)) in cases.into_iter().enumerate() {
            let got = assess(&new, prev, &t);
            assert_eq!(got.len(), want.len(), "case {i}: {got:?}");
            for (g, w) in got.iter().zip(&want) {
                assert!(g.contains(w), "case {i}: {g:?} lacks {w:?}");
            }
        }
    }

    #[test]
    fn volumes_without_size_floor_or_parts() {
        let vol = |raw, files| Facts {
            raw_size: raw,
            measure: Measure {
                unit: "files",
                part: "",
                total: Some(files),
                parts: BTreeMap::new(),
                size_floor: false,
            },
        };
        let got = assess(
            &vol(600, 0),
            Some(&vol(1 << 20, 40)),
            &Thresholds::default(),
        );
        assert!(got[0].contains("0 files in every part"), "{got:?}");
        assert_eq!(got.len(), 3, "{got:?}");
    }

    #[test]
    fn validation() {
        let mut t = Thresholds::default();
        assert!(t.validate("job.a.suspect").is_ok());
        t.shrink = 1.5;
        let e = t.validate("job.a.suspect").unwrap_err();
        assert!(e.to_string().contains("job.a.suspect.shrink"), "{e}");
        t.shrink = 0.5;
        t.min_size = "lots".into();
        assert!(t.validate("job.a.suspect").is_err());
    }
}
