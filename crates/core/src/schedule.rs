//! Cron schedules: parse a 5-field (`min hour dom month dow`) or 6-field (with seconds
//! first) expression, and compute the next run after a given time (UTC).

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};

use crate::{Error, Result};

/// A parsed cron expression. Day of month and day of week follow cron's rule: when both are
/// restricted, a day matches if either matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    seconds: u64,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    dom_star: bool,
    dow_star: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn field(
    expr: &str,
    what: &str,
    min: u32,
    max: u32,
    names: &[&str],
    name_base: u32,
) -> Result<u64> {
    let bad = |why: &str| Error::config(format!("cron {what} field {expr:?}: {why}"));
    let value = |s: &str| -> Result<u32> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32 + name_base);
        }
        let v: u32 = s.parse().map_err(|_| bad("not a number"))?;
        if v < min || v > max {
            return Err(bad(&format!("{v} is outside {min}-{max}")));
        }
        Ok(v)
    };
    let mut bits = 0u64;
    for part in expr.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let s: u32 = s.parse().map_err(|_| bad("bad step"))?;
                if s == 0 {
                    return Err(bad("step 0"));
                }
                (r, s)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            (v, if part.contains('/') { max } else { v })
        };
        if lo > hi {
            return Err(bad("range runs backwards"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

impl Schedule {
    /// Parse a cron expression. Also accepts `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`.
    pub fn parse(expr: &str) -> Result<Schedule> {
        let expanded = match expr.trim() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            other => other,
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        let (sec, rest) = match parts.len() {
            5 => ("0", &parts[..]),
            6 => (parts[0], &parts[1..]),
            n => {
                return Err(Error::config(format!(
                    "cron {expr:?} has {n} fields: use 5 (min hour day month weekday) or 6 (with seconds first)"
                )))
            }
        };
        let mut weekdays = field(rest[4], "weekday", 0, 7, &DAYS, 0)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & !(1 << 7);
        }
        Ok(Schedule {
            seconds: field(sec, "second", 0, 59, &[], 0)?,
            minutes: field(rest[0], "minute", 0, 59, &[], 0)?,
            hours: field(rest[1], "hour", 0, 23, &[], 0)?,
            days: field(rest[2], "day", 1, 31, &[], 0)?,
            months: field(rest[3], "month", 1, 12, &MONTHS, 1)?,
            weekdays,
            dom_star: rest[2] == "*",
            dow_star: rest[4] == "*",
        })
    }

    fn day_matches(&self, t: &DateTime<Utc>) -> bool {
        let dom = self.days & (1 << t.day()) != 0;
        let dow = self.weekdays & (1 << t.weekday().num_days_from_sunday()) != 0;
        match (self.dom_star, self.dow_star) {
            (true, true) => true,
            (false, true) => dom,
            (true, false) => dow,
            (false, false) => dom || dow,
        }
    }

    /// The first time strictly after `after` that matches, searching up to five years ahead.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut t = after.with_nanosecond(0)? + Duration::seconds(1);
        let limit = after + Duration::days(5 * 366);
        while t <= limit {
            if self.months & (1 << t.month()) == 0 {
                let (y, m) = if t.month() == 12 {
                    (t.year() + 1, 1)
                } else {
                    (t.year(), t.month() + 1)
                };
                t = Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single()?;
                continue;
            }
            if !self.day_matches(&t) {
                t = Utc
                    .with_ymd_and_hms(t.year(), t.month(), t.day(), 0, 0, 0)
                    .single()?
                    + Duration::days(1);
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = t.with_minute(0)?.with_second(0)? + Duration::hours(1);
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t = t.with_second(0)? + Duration::minutes(1);
                continue;
            }
            if self.seconds & (1 << t.second()) == 0 {
                t += Duration::seconds(1);
                continue;
            }
            return Some(t);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        crate::catalog::parse_time(s).unwrap()
    }

    #[test]
    fn next_table() {
        let cases = [
            ("0 */6 * * *", "2026-01-01 00:00", "2026-01-01 06:00:00"),
            ("0 */6 * * *", "2026-01-01 05:59:59", "2026-01-01 06:00:00"),
            ("0 4 1 * *", "2026-01-15 00:00", "2026-02-01 04:00:00"),
            ("30 2 * * mon", "2026-11-24 00:00", "2026-11-30 02:30:00"),
            ("0 0 29 2 *", "2026-03-01", "2028-02-29 00:00:00"),
            (
                "*/15 * * * * *",
                "2026-01-01 00:00:00",
                "2026-01-01 00:00:15",
            ),
            ("@daily", "2026-12-31 23:00", "2027-01-01 00:00:00"),
            ("0 0 1 * 0", "2026-11-24", "2026-11-29 00:00:00"),
            ("0 12 * * 7", "2026-11-24", "2026-11-29 12:00:00"),
            (
                "0 9-17/4 * * 1-5",
                "2026-11-24 10:00",
                "2026-11-24 13:00:00",
            ),
        ];
        for (expr, after, want) in cases {
            let s = Schedule::parse(expr).unwrap();
            assert_eq!(
                s.next_after(t(after)),
                Some(t(want)),
                "{expr} after {after}"
            );
        }
    }

    #[test]
    fn bad_table() {
        for expr in [
            "",
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "*/0 * * * *",
            "5-1 * * * *",
            "x * * * *",
        ] {
            let e = Schedule::parse(expr).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Config, "{expr}");
        }
    }
}

/// Of several schedules, the earliest next run strictly after `after`, and the indexes of all
/// schedules due at that moment. `None` when no schedule ever runs again.
pub fn next_due(
    schedules: &[Schedule],
    after: DateTime<Utc>,
) -> Option<(DateTime<Utc>, Vec<usize>)> {
    let nexts: Vec<(usize, DateTime<Utc>)> = schedules
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.next_after(after).map(|t| (i, t)))
        .collect();
    let first = nexts.iter().map(|(_, t)| *t).min()?;
    Some((
        first,
        nexts
            .iter()
            .filter(|(_, t)| *t == first)
            .map(|(i, _)| *i)
            .collect(),
    ))
}

#[cfg(test)]
mod due_tests {
    use super::*;

    #[test]
    fn next_due_table() {
        let s = |e: &str| Schedule::parse(e).unwrap();
        let after = crate::catalog::parse_time("2026-11-24 05:30").unwrap();
        type Case = (Vec<Schedule>, Option<(&'static str, Vec<usize>)>);
        let cases: Vec<Case> = vec![
            (vec![], None),
            (
                vec![s("0 */6 * * *"), s("0 6 * * *"), s("15 * * * *")],
                Some(("2026-11-24 06:00", vec![0, 1])),
            ),
            (
                vec![s("0 4 1 * *"), s("45 5 * * *")],
                Some(("2026-11-24 05:45", vec![1])),
            ),
        ];
        for (scheds, want) in cases {
            let got = next_due(&scheds, after);
            let want = want.map(|(t, ix)| (crate::catalog::parse_time(t).unwrap(), ix));
            assert_eq!(got, want);
        }
    }
}
