//! Repeating schedules in real time zones.
//!
//! Every occurrence is computed from the anchor (the first `once`) rather than
//! from the previous run, so a monthly task anchored on the 31st returns to the
//! 31st after a short month (Jan 31 → Feb 28 → Mar 31), and a daily task keeps
//! its wall-clock time across DST changes.

use jiff::{Timestamp, ToSpan, civil::DateTime, tz::TimeZone};

use crate::task::Repeat;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("unknown time zone '{0}'")]
pub struct UnknownTimeZone(pub String);

pub fn time_zone(name: &str) -> Result<TimeZone, UnknownTimeZone> {
    TimeZone::get(name).map_err(|_| UnknownTimeZone(name.to_string()))
}

/// The `k`-th occurrence after the anchor (k = 0 is the anchor itself).
fn occurrence(anchor: DateTime, repeat: Repeat, k: i64, tz: &TimeZone) -> Option<Timestamp> {
    let civil = match repeat {
        Repeat::Daily => anchor.checked_add(k.days()),
        Repeat::Weekly => anchor.checked_add((7 * k).days()),
        // jiff clamps to the month's last day: Jan 31 + 1 month = Feb 28.
        Repeat::Monthly => anchor.checked_add(k.months()),
    }
    .ok()?;
    // `to_zoned` uses the "compatible" rule: a time in a spring-forward gap
    // moves forward by the gap; an ambiguous fall-back time takes the first.
    tz.to_zoned(civil).ok().map(|z| z.timestamp())
}

/// The first occurrence strictly after `after`. Runs missed while the
/// service was down are skipped: the caller ran the task once already.
pub fn next_after(anchor: Timestamp, repeat: Repeat, tz: &TimeZone, after: Timestamp) -> Timestamp {
    let civil = anchor.to_zoned(tz.clone()).datetime();
    // Start near the answer instead of walking every missed period.
    let elapsed_days = (after.as_second() - anchor.as_second()).max(0) / 86_400;
    let mut k = match repeat {
        Repeat::Daily => elapsed_days - 2,
        Repeat::Weekly => elapsed_days / 7 - 2,
        Repeat::Monthly => elapsed_days / 31 - 2,
    }
    // From the anchor itself: a run started early (`execute` before the
    // first occurrence) leaves that occurrence scheduled.
    .max(0);
    loop {
        match occurrence(civil, repeat, k, tz) {
            Some(t) if t > after => return t,
            Some(_) => k += 1,
            // Past the representable range: never again.
            None => return Timestamp::MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(tz: &str, civil: &str) -> Timestamp {
        let dt: DateTime = civil.parse().unwrap();
        time_zone(tz).unwrap().to_zoned(dt).unwrap().timestamp()
    }

    fn civil(tz: &str, t: Timestamp) -> String {
        t.to_zoned(time_zone(tz).unwrap()).datetime().to_string()
    }

    /// (zone, anchor, repeat, after, expected next) in civil time of the zone.
    const CASES: &[(&str, &str, Repeat, &str, &str)] = &[
        // Plain daily.
        (
            "UTC",
            "2026-01-01T09:00",
            Repeat::Daily,
            "2026-01-01T09:00",
            "2026-01-02T09:00:00",
        ),
        // Spring forward in Amsterdam (2026-03-29 02:00 → 03:00): 09:00 stays 09:00.
        (
            "Europe/Amsterdam",
            "2026-03-28T09:00",
            Repeat::Daily,
            "2026-03-28T09:00",
            "2026-03-29T09:00:00",
        ),
        // A time inside the gap moves forward by the gap.
        (
            "Europe/Amsterdam",
            "2026-03-28T02:30",
            Repeat::Daily,
            "2026-03-28T02:30",
            "2026-03-29T03:30:00",
        ),
        // Fall back (2026-10-25 03:00 → 02:00): the ambiguous 02:30 takes the first.
        (
            "Europe/Amsterdam",
            "2026-10-24T02:30",
            Repeat::Daily,
            "2026-10-24T02:30",
            "2026-10-25T02:30:00",
        ),
        // New York's DST change on 2026-03-08.
        (
            "America/New_York",
            "2026-03-07T08:00",
            Repeat::Daily,
            "2026-03-07T08:00",
            "2026-03-08T08:00:00",
        ),
        // Weekly keeps the weekday and wall time across DST.
        (
            "America/New_York",
            "2026-03-02T08:00",
            Repeat::Weekly,
            "2026-03-02T08:00",
            "2026-03-09T08:00:00",
        ),
        // Monthly from Jan 31 clamps to Feb 28 and returns to Mar 31.
        (
            "UTC",
            "2026-01-31T10:00",
            Repeat::Monthly,
            "2026-01-31T10:00",
            "2026-02-28T10:00:00",
        ),
        (
            "UTC",
            "2026-01-31T10:00",
            Repeat::Monthly,
            "2026-02-28T10:00",
            "2026-03-31T10:00:00",
        ),
        (
            "UTC",
            "2026-01-31T10:00",
            Repeat::Monthly,
            "2026-03-31T10:00",
            "2026-04-30T10:00:00",
        ),
        // Feb 29 anchors and Feb 29 as a clamp target in a leap year.
        (
            "UTC",
            "2028-02-29T00:00",
            Repeat::Monthly,
            "2028-02-29T00:00",
            "2028-03-29T00:00:00",
        ),
        (
            "UTC",
            "2028-01-29T00:00",
            Repeat::Monthly,
            "2028-01-29T00:00",
            "2028-02-29T00:00:00",
        ),
        (
            "UTC",
            "2027-01-29T00:00",
            Repeat::Monthly,
            "2027-01-29T00:00",
            "2027-02-28T00:00:00",
        ),
        // Missed runs: down for ten days, the next run is the next one after now.
        (
            "UTC",
            "2026-05-01T06:00",
            Repeat::Daily,
            "2026-05-11T07:00",
            "2026-05-12T06:00:00",
        ),
        (
            "Asia/Tokyo",
            "2026-05-01T06:00",
            Repeat::Monthly,
            "2027-05-01T06:00",
            "2027-06-01T06:00:00",
        ),
    ];

    #[test]
    fn an_early_run_keeps_the_first_occurrence() {
        let tz = TimeZone::get("Europe/Amsterdam").unwrap();
        let anchor = at("Europe/Amsterdam", "2027-05-01T09:00");
        let early = at("Europe/Amsterdam", "2027-04-20T12:00");
        assert_eq!(next_after(anchor, Repeat::Daily, &tz, early), anchor);
        assert_eq!(
            next_after(anchor, Repeat::Daily, &tz, anchor),
            at("Europe/Amsterdam", "2027-05-02T09:00")
        );
    }

    #[test]
    fn repeat_table() {
        for &(tz, anchor, repeat, after, expected) in CASES {
            let zone = time_zone(tz).unwrap();
            let next = next_after(at(tz, anchor), repeat, &zone, at(tz, after));
            assert_eq!(
                civil(tz, next),
                expected,
                "{tz} {anchor} {repeat:?} after {after}"
            );
        }
    }

    #[test]
    fn unknown_zone_is_named() {
        assert_eq!(
            time_zone("Mars/Olympus").unwrap_err().to_string(),
            "unknown time zone 'Mars/Olympus'"
        );
    }
}
