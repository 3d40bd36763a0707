//! Sizes in words and back: `1KiB` <-> 1024, the one size formatter of drkit.

use crate::{Error, Result};

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
}
