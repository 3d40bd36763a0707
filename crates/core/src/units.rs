//! Sizes and durations in words and back: `1KiB` <-> 1024, `6h` <-> 6 hours; the one size
//! formatter of drkit ([`human_bytes`]) and the typed [`Span`] that config durations are
//! parsed into once, at load.

use std::time::Duration;

use crate::{Error, Result};

/// Parse a duration: a number and a unit, `90s`, `15m`, `6h`, `7d`, `2w`.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let err = || {
        Error::config(format!(
            "cannot read duration {s:?}: use a number and a unit, e.g. 90s, 15m, 6h, 7d"
        ))
    };
    let unit_at = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (n, unit) = s.split_at(unit_at);
    let n: u64 = n.parse().map_err(|_| err())?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(err()),
    };
    Ok(Duration::from_secs(n.checked_mul(secs).ok_or_else(err)?))
}

/// A duration as the config wrote it (`"30d"`): parsed once, at load, and kept with its words
/// so that messages say what the operator wrote ("older than 30d").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    duration: Duration,
    text: String,
}

impl Span {
    /// The duration.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// The duration as a `chrono` duration, saturating (for arithmetic with times).
    pub fn chrono(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.duration).unwrap_or(chrono::Duration::MAX)
    }
}

impl std::str::FromStr for Span {
    type Err = Error;
    fn from_str(s: &str) -> Result<Span> {
        Ok(Span {
            duration: parse_duration(s)?,
            text: s.trim().to_string(),
        })
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Span, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Parse a size: a number of bytes, optionally with `B`, `KiB`, `MiB`, `GiB`, `TiB` (or `K`,
/// `KB`, ... read as powers of 1024).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad_size(s))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(bad_size(s)),
    };
    Ok((n * mult as f64) as u64)
}

fn bad_size(s: &str) -> Error {
    Error::config(format!(
        "cannot read size {s:?}: use bytes or a unit, e.g. 1KiB, 64MiB, 2GiB"
    ))
}

/// A byte count in words for a reason (`108 B`, `3.2 GiB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (s, want) in [
            ("0", 0),
            ("512", 512),
            ("1KiB", 1024),
            ("1 KiB", 1024),
            ("4MiB", 4 << 20),
            ("1.5k", 1536),
            ("2GiB", 2 << 30),
        ] {
            assert_eq!(parse_size(s).unwrap(), want, "{s}");
        }
        for bad in ["", "KiB", "12 parsecs", "-1"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        for (n, want) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (5 * 1024 * 1024 + 1, "5.0 MiB"),
        ] {
            assert_eq!(human_bytes(n), want);
        }
    }

    #[test]
    fn spans() {
        for (s, want) in [
            ("90s", Some(90)),
            ("15m", Some(900)),
            ("6h", Some(21_600)),
            ("7d", Some(604_800)),
            ("2w", Some(1_209_600)),
            (" 1d ", Some(86_400)),
            ("3 days", None),
            ("d", None),
            ("", None),
            ("-1d", None),
            ("99999999999999999999w", None),
        ] {
            let got: Option<Span> = s.parse().ok();
            assert_eq!(got.as_ref().map(|g| g.duration().as_secs()), want, "{s}");
            if let Some(g) = got {
                assert_eq!(g.to_string(), s.trim());
            }
        }
    }
}
