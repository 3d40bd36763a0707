//! Cron schedules: parse a 5-field (`min hour dom month dow`) or 6-field (with seconds
//! first) expression, and compute the next run after a given time, in UTC or in an IANA time
//! zone with its daylight-saving changes.
//!
//! The parser is our own, not the `cron` crate's: that crate follows Quartz's syntax (day of
//! week 1-7 with Sunday = 1, day-of-month AND day-of-week), so `0 2 * * 1-5` would run on the
//! wrong days; crontab's rules (0 or 7 = Sunday, day-of-month OR day-of-week) are what
//! operators copy from their crontabs.
//!
//! Time zones: a slot is a wall-clock time in the zone. A slot that does not exist (the hour
//! skipped when clocks go forward) is skipped once; a slot that exists twice (the hour
//! repeated when clocks go back) runs once, at its first occurrence.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use crate::{Error, Result};

/// An IANA time zone by name (`Europe/Berlin`, `America/New_York`, `UTC`); a config error
/// naming `what` otherwise.
pub fn zone(name: &str, what: &str) -> Result<Tz> {
    name.parse::<Tz>().map_err(|_| {
        Error::config(format!(
            "{what}: {name:?} is not an IANA time zone name (e.g. \"Europe/Berlin\", \"UTC\")"
        ))
    })
}

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

    fn day_matches(&self, t: &NaiveDateTime) -> bool {
        let dom = self.days & (1 << t.day()) != 0;
        let dow = self.weekdays & (1 << t.weekday().num_days_from_sunday()) != 0;
        match (self.dom_star, self.dow_star) {
            (true, true) => true,
            (false, true) => dom,
            (true, false) => dow,
            (false, false) => dom || dow,
        }
    }

    /// The first time strictly after `after` that matches (UTC), searching up to five years
    /// ahead.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next_in(after, &Tz::UTC)
    }

    /// The first slot of `zone`'s wall clock that comes strictly after the instant `after`,
    /// searching up to five years ahead. A wall-clock slot that does not exist in the zone is
    /// skipped; one that exists twice counts at its first occurrence only (when that one is
    /// not after `after`, the slot is over).
    pub fn next_in(&self, after: DateTime<Utc>, zone: &Tz) -> Option<DateTime<Utc>> {
        let limit = after.naive_utc() + Duration::days(5 * 366);
        let mut local = after.with_timezone(zone).naive_local();
        while local <= limit {
            local = self.next_wall(local, limit)?;
            match zone.from_local_datetime(&local) {
                chrono::LocalResult::Single(t) if t > after => return Some(t.to_utc()),
                chrono::LocalResult::Ambiguous(first, _) if first > after => {
                    return Some(first.to_utc())
                }
                // Not there (clocks went forward), or already over.
                _ => {}
            }
        }
        None
    }

    /// The first wall-clock time strictly after `after` that matches, up to `limit`.
    fn next_wall(&self, after: NaiveDateTime, limit: NaiveDateTime) -> Option<NaiveDateTime> {
        let midnight = |d: NaiveDate| d.and_hms_opt(0, 0, 0);
        let mut t = after.with_nanosecond(0)? + Duration::seconds(1);
        while t <= limit {
            if self.months & (1 << t.month()) == 0 {
                let (y, m) = if t.month() == 12 {
                    (t.year() + 1, 1)
                } else {
                    (t.year(), t.month() + 1)
                };
                t = midnight(NaiveDate::from_ymd_opt(y, m, 1)?)?;
                continue;
            }
            if !self.day_matches(&t) {
                t = midnight(t.date())? + Duration::days(1);
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
    fn daylight_saving_table() {
        let berlin = zone("Europe/Berlin", "test").unwrap();
        let new_york = zone("America/New_York", "test").unwrap();
        // 2026: Berlin goes forward on Mar 29 (02:00 -> 03:00) and back on Oct 25 (03:00 ->
        // 02:00); New York forward on Mar 8 and back on Nov 1 (02:00 -> 01:00).
        let cases = [
            // A normal day: 02:30 in Berlin's winter is 01:30 UTC.
            (
                berlin,
                "30 2 * * *",
                "2026-03-27 12:00",
                "2026-03-28 01:30:00",
            ),
            // 02:30 does not exist on Mar 29: skipped once, the next day runs (UTC+2).
            (
                berlin,
                "30 2 * * *",
                "2026-03-28 12:00",
                "2026-03-30 00:30:00",
            ),
            // Hourly across the gap: 01:00 CET, then 03:00 CEST, one hour later in UTC.
            (
                berlin,
                "0 * * * *",
                "2026-03-29 00:00",
                "2026-03-29 01:00:00",
            ),
            // 02:30 exists twice on Oct 25: it runs at the first (CEST, 00:30 UTC) ...
            (
                berlin,
                "30 2 * * *",
                "2026-10-24 12:00",
                "2026-10-25 00:30:00",
            ),
            // ... and not again at the second (CET, 01:30 UTC): the next run is Oct 26.
            (
                berlin,
                "30 2 * * *",
                "2026-10-25 00:30",
                "2026-10-26 01:30:00",
            ),
            // Started during the repeated hour, after the first 02:30: over for the day.
            (
                berlin,
                "30 2 * * *",
                "2026-10-25 01:00",
                "2026-10-26 01:30:00",
            ),
            // Every 30 minutes over New York's gap: 01:30 EST, then 03:00 EDT.
            (
                new_york,
                "*/30 * * * *",
                "2026-03-08 06:31",
                "2026-03-08 07:00:00",
            ),
            // Hourly over New York's repeated hour: 01:00 EDT (05:00 UTC) runs, 01:00 EST
            // (06:00 UTC) does not, 02:00 EST (07:00 UTC) does.
            (
                new_york,
                "0 * * * *",
                "2026-11-01 04:30",
                "2026-11-01 05:00:00",
            ),
            (
                new_york,
                "0 * * * *",
                "2026-11-01 05:00",
                "2026-11-01 07:00:00",
            ),
            // Summer time: 02:00 EDT is 06:00 UTC.
            (
                new_york,
                "0 2 * * *",
                "2026-06-01 00:00",
                "2026-06-01 06:00:00",
            ),
        ];
        for (tz, expr, after, want) in cases {
            let s = Schedule::parse(expr).unwrap();
            assert_eq!(
                s.next_in(t(after), &tz),
                Some(t(want)),
                "{expr} in {tz} after {after} UTC"
            );
        }
        let e = zone("Europe/Atlantis", "job.a.timezone").unwrap_err();
        assert!(e.to_string().contains("job.a.timezone"), "{e}");
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
