//! Budget periods: whole periods counted from the unix epoch, so every
//! replica agrees when one starts without talking to the others.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A key's budget period (`budget_period`), or none: the spend never resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// Its length in whole seconds (at least 1); `None`: never resets.
    secs: Option<i64>,
}

impl Period {
    /// A period of `len` (rounded down to whole seconds, at least one);
    /// `None`: the spend never resets.
    pub fn new(len: Option<Duration>) -> Self {
        Period {
            secs: len.map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX).max(1)),
        }
    }

    /// Its length, when it resets.
    pub fn length(&self) -> Option<Duration> {
        self.secs.map(|s| Duration::from_secs(s.unsigned_abs()))
    }

    /// The start (unix seconds) of the period holding `now`: `now` rounded
    /// down to a whole number of periods since the epoch; 0 for a period
    /// that never resets.
    pub fn start_at(&self, now: i64) -> i64 {
        match self.secs {
            None => 0,
            Some(len) => now.div_euclid(len).saturating_mul(len),
        }
    }

    /// The end (unix seconds, exclusive) of the period holding `now`, when
    /// it resets.
    pub fn end_at(&self, now: i64) -> Option<i64> {
        self.secs.map(|len| self.start_at(now).saturating_add(len))
    }
}

/// Now in unix seconds (0 before the epoch).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_whole_lengths_from_the_epoch() {
        let day = Period::new(Some(Duration::from_secs(86_400)));
        // 2024-03-10T15:04:05Z
        let now = 1_710_083_045;
        assert_eq!(day.start_at(now), 1_710_028_800, "2024-03-10T00:00:00Z");
        assert_eq!(day.end_at(now), Some(1_710_115_200));
        assert_eq!(
            day.start_at(1_710_028_800),
            1_710_028_800,
            "a start is its own"
        );
        assert_eq!(day.start_at(1_710_028_799), 1_710_028_800 - 86_400);
        // 30 days: from the epoch, not from the month.
        let month = Period::new(Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(
            month.start_at(now),
            19_770 * 86_400,
            "day 19,793 is in the 660th period"
        );
        assert_eq!(month.start_at(now) % (30 * 86_400), 0);
        assert!(month.start_at(now) <= now && now < month.end_at(now).unwrap());
        assert_eq!(month.length(), Some(Duration::from_secs(30 * 86_400)));
    }

    #[test]
    fn no_period_never_resets_and_odd_lengths_are_whole_seconds() {
        let never = Period::new(None);
        assert_eq!(never.start_at(1_710_083_045), 0);
        assert_eq!(never.end_at(1_710_083_045), None);
        assert_eq!(never.length(), None);
        let short = Period::new(Some(Duration::from_millis(90_500)));
        assert_eq!(short.length(), Some(Duration::from_secs(90)));
        assert_eq!(short.start_at(179), 90);
        assert_eq!(short.start_at(180), 180);
        // Before the epoch (a clock set wrong): still whole periods.
        assert_eq!(short.start_at(-1), -90);
        assert!(unix_now() > 1_700_000_000);
    }
}
