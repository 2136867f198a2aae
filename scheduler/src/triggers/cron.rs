//! Cron arithmetic, with the clock passed in: which scheduled instants are due, and the run id
//! each one gets.
//!
//! Expressions are read by `croner`: 5 fields (6 with leading seconds), names (`MON-FRI`,
//! `JAN`), `@hourly`…`@yearly`, 0 or 7 for Sunday, day-of-month and day-of-week OR-ed when both
//! are restricted (POSIX). In a time zone with DST, a time in the spring-forward gap runs once at
//! the first instant after the gap, and a time in the repeated fall-back hour runs once.

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use sha2::{Digest, Sha256};

use crate::spec::Catchup;

/// Most missed instants `catchup: all` starts at once; older ones are dropped and logged.
pub const CATCHUP_CAP: usize = 100;

/// A parsed schedule in its time zone, made once when the pipeline is loaded.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
    expr: String,
}

/// Two schedules are the same when they were written the same.
impl PartialEq for Schedule {
    fn eq(&self, other: &Schedule) -> bool {
        self.expr == other.expr && self.tz == other.tz
    }
}

impl Schedule {
    /// Parses `expr` for time zone `tz`.
    pub fn new(expr: &str, tz: &str) -> Result<Schedule, String> {
        let cron = expr
            .parse::<Cron>()
            .map_err(|e| format!("`{expr}` is not a valid cron expression: {e}"))?;
        let tz = tz
            .parse::<Tz>()
            .map_err(|_| format!("`{tz}` is not an IANA time zone"))?;
        Ok(Schedule {
            cron,
            tz,
            expr: expr.to_string(),
        })
    }

    /// The first scheduled instant strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = self.tz.from_utc_datetime(&after.naive_utc());
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// What to start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// Instants to start a run for, oldest first.
    pub fire: Vec<DateTime<Utc>>,
    /// Missed instants not started (catch-up policy, or over the cap).
    pub dropped: usize,
    /// What to record as the last instant handled, even when nothing fires.
    pub handled_through: DateTime<Utc>,
}

/// The instants after `last` (the last one handled) up to `now`, under `catchup`. `Latest`
/// and `None` differ only for instants missed while the scheduler was away: an instant that
/// came due since the last look (within `slack` of `now`) always fires.
pub fn due(
    schedule: &Schedule,
    last: DateTime<Utc>,
    now: DateTime<Utc>,
    catchup: Catchup,
    slack: chrono::Duration,
) -> Due {
    let mut instants = Vec::new();
    let mut dropped = 0;
    let mut cursor = last;
    while let Some(next) = schedule.next_after(cursor) {
        if next > now {
            break;
        }
        instants.push(next);
        if instants.len() > CATCHUP_CAP {
            instants.remove(0);
            dropped += 1;
        }
        cursor = next;
    }
    let handled_through = instants.last().copied().unwrap_or(last).max(last);
    let (on_time, missed): (Vec<_>, Vec<_>) = instants.into_iter().partition(|t| now - *t <= slack);
    let mut fire = Vec::new();
    match catchup {
        Catchup::All => fire.extend(missed),
        Catchup::Latest => {
            if on_time.is_empty() {
                if let Some(latest) = missed.last() {
                    fire.push(*latest);
                }
                dropped += missed.len().saturating_sub(1);
            } else {
                dropped += missed.len();
            }
        }
        Catchup::None => dropped += missed.len(),
    }
    fire.extend(on_time);
    Due {
        fire,
        dropped,
        handled_through,
    }
}

/// The id of the run for a scheduled instant: a ULID whose time part is the instant and whose
/// random part is derived from (pipeline, trigger), so the same instant always maps to the same
/// run and a restarted scheduler cannot start it twice.
pub fn run_id(pipeline: &str, trigger: &str, instant: DateTime<Utc>) -> String {
    let digest = Sha256::digest(format!("{pipeline}\0{trigger}").as_bytes());
    let mut random = [0u8; 16];
    random[6..].copy_from_slice(&digest[..10]);
    let random = u128::from_be_bytes(random);
    let ms = u64::try_from(instant.timestamp_millis()).unwrap_or(0);
    ulid::Ulid::from_parts(ms, random).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("rfc3339")
            .with_timezone(&Utc)
    }

    /// The next `n` instants after `from`, as RFC 3339 in UTC.
    fn next_n(expr: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
        let schedule = Schedule::new(expr, tz).unwrap();
        let mut at = utc(from);
        let mut out = Vec::new();
        for _ in 0..n {
            at = schedule.next_after(at).unwrap();
            out.push(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
        out
    }

    #[test]
    fn five_fields_names_and_nicknames() {
        assert_eq!(
            next_n("30 2 * * MON-FRI", "UTC", "2026-11-27T00:00:00Z", 2),
            ["2026-11-27T02:30:00Z", "2026-11-30T02:30:00Z"]
        );
        assert_eq!(
            next_n("0 0 1 JAN *", "UTC", "2026-06-01T00:00:00Z", 1),
            ["2027-01-01T00:00:00Z"]
        );
        assert_eq!(
            next_n("@daily", "UTC", "2026-11-28T10:00:00Z", 1),
            ["2026-11-29T00:00:00Z"]
        );
        assert_eq!(
            next_n("@hourly", "UTC", "2026-11-28T10:00:00Z", 1),
            ["2026-11-28T11:00:00Z"]
        );
        assert_eq!(
            next_n("@weekly", "UTC", "2026-11-28T10:00:00Z", 1),
            ["2026-11-29T00:00:00Z"]
        );
        assert_eq!(
            next_n("@monthly", "UTC", "2026-11-28T10:00:00Z", 1),
            ["2026-12-01T00:00:00Z"]
        );
        assert_eq!(
            next_n("@yearly", "UTC", "2026-11-28T10:00:00Z", 1),
            ["2027-01-01T00:00:00Z"]
        );
    }

    #[test]
    fn six_fields_have_leading_seconds() {
        assert_eq!(
            next_n("15 * * * * *", "UTC", "2026-11-28T10:00:00Z", 2),
            ["2026-11-28T10:00:15Z", "2026-11-28T10:01:15Z"]
        );
    }

    #[test]
    fn zero_and_seven_are_sunday() {
        // 2026-11-29 is a Sunday.
        for expr in ["0 9 * * 0", "0 9 * * 7", "0 9 * * SUN"] {
            assert_eq!(
                next_n(expr, "UTC", "2026-11-28T10:00:00Z", 1),
                ["2026-11-29T09:00:00Z"],
                "{expr}"
            );
        }
        // 1 is Monday, not Sunday (the `cron` crate's numbering).
        assert_eq!(
            next_n("0 9 * * 1", "UTC", "2026-11-28T10:00:00Z", 1),
            ["2026-11-30T09:00:00Z"]
        );
    }

    #[test]
    fn day_of_month_and_day_of_week_are_ored_when_both_are_restricted() {
        // The 1st of the month OR any Friday: 2026-12-04 (Fri), ..., 2027-01-01 (Fri and 1st).
        assert_eq!(
            next_n("0 0 1 * FRI", "UTC", "2026-11-28T00:00:00Z", 3),
            [
                "2026-12-01T00:00:00Z",
                "2026-12-04T00:00:00Z",
                "2026-12-11T00:00:00Z"
            ]
        );
    }

    #[test]
    fn leap_days_and_month_ends() {
        assert_eq!(
            next_n("0 12 29 2 *", "UTC", "2026-03-01T00:00:00Z", 1),
            ["2028-02-29T12:00:00Z"]
        );
        assert_eq!(
            next_n("0 0 31 * *", "UTC", "2026-11-01T00:00:00Z", 2),
            ["2026-12-31T00:00:00Z", "2027-01-31T00:00:00Z"]
        );
        // `L`: the last day of every month, February included.
        assert_eq!(
            next_n("0 0 L * *", "UTC", "2027-01-31T12:00:00Z", 2),
            ["2027-02-28T00:00:00Z", "2027-03-31T00:00:00Z"]
        );
    }

    #[test]
    fn spring_forward_gap_runs_once_at_the_first_instant_after_it() {
        // New York, 2026-03-08: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist.
        assert_eq!(
            next_n("30 2 * * *", "America/New_York", "2026-03-07T12:00:00Z", 3),
            [
                "2026-03-08T07:00:00Z", // 03:00 EDT, the first instant after the gap
                "2026-03-09T06:30:00Z", // 02:30 EDT
                "2026-03-10T06:30:00Z"
            ]
        );
        // Belgrade, 2026-03-29: 02:00 CET jumps to 03:00 CEST.
        assert_eq!(
            next_n("30 2 * * *", "Europe/Belgrade", "2026-03-28T12:00:00Z", 2),
            ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]
        );
    }

    #[test]
    fn fall_back_hour_runs_once() {
        // New York, 2026-11-01: 01:30 happens twice (EDT, then EST); the job runs once.
        assert_eq!(
            next_n("30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", 2),
            ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]
        );
        // Belgrade, 2026-10-25: 02:30 happens twice.
        assert_eq!(
            next_n("30 2 * * *", "Europe/Belgrade", "2026-10-24T12:00:00Z", 2),
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
        );
    }

    fn hourly_due(last: &str, now: &str, catchup: Catchup) -> Due {
        let schedule = Schedule::new("0 * * * *", "UTC").unwrap();
        due(
            &schedule,
            utc(last),
            utc(now),
            catchup,
            chrono::Duration::seconds(5),
        )
    }

    #[test]
    fn an_instant_fires_once_across_a_restart_just_before_or_after_it() {
        // Looked just before 10:00, restarted, looks again just after: 10:00 fires once.
        let before = hourly_due(
            "2026-11-28T09:00:00Z",
            "2026-11-28T09:59:59Z",
            Catchup::None,
        );
        assert!(before.fire.is_empty());
        let after = hourly_due(
            &before.handled_through.to_rfc3339(),
            "2026-11-28T10:00:01Z",
            Catchup::None,
        );
        assert_eq!(after.fire, [utc("2026-11-28T10:00:00Z")]);
        let again = hourly_due(
            &after.handled_through.to_rfc3339(),
            "2026-11-28T10:00:03Z",
            Catchup::None,
        );
        assert!(again.fire.is_empty(), "recorded instants never fire again");
    }

    #[test]
    fn catchup_policies_after_downtime() {
        // Down from 06:30 to 10:20: 07:00, 08:00, 09:00 and 10:00 were missed.
        let none = hourly_due(
            "2026-11-28T06:30:00Z",
            "2026-11-28T10:20:00Z",
            Catchup::None,
        );
        assert!(none.fire.is_empty());
        assert_eq!(none.dropped, 4);
        assert_eq!(none.handled_through, utc("2026-11-28T10:00:00Z"));
        let latest = hourly_due(
            "2026-11-28T06:30:00Z",
            "2026-11-28T10:20:00Z",
            Catchup::Latest,
        );
        assert_eq!(latest.fire, [utc("2026-11-28T10:00:00Z")]);
        assert_eq!(latest.dropped, 3);
        let all = hourly_due("2026-11-28T06:30:00Z", "2026-11-28T10:20:00Z", Catchup::All);
        assert_eq!(all.fire.len(), 4);
        assert_eq!(all.fire[0], utc("2026-11-28T07:00:00Z"));
    }

    #[test]
    fn catchup_all_is_capped() {
        let all = hourly_due("2026-11-01T00:00:00Z", "2026-11-28T00:30:00Z", Catchup::All);
        assert_eq!(all.fire.len(), CATCHUP_CAP);
        assert_eq!(all.dropped, 27 * 24 - CATCHUP_CAP);
        assert_eq!(*all.fire.last().unwrap(), utc("2026-11-28T00:00:00Z"));
    }

    #[test]
    fn a_clock_jump_back_does_not_fire_again() {
        // Handled through 10:00; the clock is set back to 09:10: nothing fires until 10:00 passes.
        let jumped = hourly_due("2026-11-28T10:00:00Z", "2026-11-28T09:10:00Z", Catchup::All);
        assert!(jumped.fire.is_empty());
        assert_eq!(jumped.handled_through, utc("2026-11-28T10:00:00Z"));
        // A jump forward is downtime by another name: the catch-up policy decides.
        let forward = hourly_due(
            "2026-11-28T10:00:00Z",
            "2026-11-28T13:30:00Z",
            Catchup::Latest,
        );
        assert_eq!(forward.fire, [utc("2026-11-28T13:00:00Z")]);
    }

    #[test]
    fn run_ids_are_derived_from_pipeline_trigger_and_instant() {
        let at = utc("2026-11-28T10:00:00Z");
        let id = run_id("nightly", "cron/abc", at);
        assert_eq!(id, run_id("nightly", "cron/abc", at));
        assert_ne!(id, run_id("nightly", "cron/other", at));
        assert_ne!(
            id,
            run_id("nightly", "cron/abc", utc("2026-11-28T11:00:00Z"))
        );
        let parsed: ulid::Ulid = id.parse().unwrap();
        assert_eq!(parsed.timestamp_ms(), at.timestamp_millis() as u64);
    }
}
