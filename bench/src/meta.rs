//! What a report needs to be reproduced: the spate build, the date, the
//! machine (cores, kernel, and the probes of its disk and loopback).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::probe;

/// The build that produced the report.
#[derive(Debug, Clone, Serialize)]
pub struct Build {
    pub version: &'static str,
    /// Short git hash of the bench crate's build ("unknown" without git).
    pub commit: &'static str,
}

pub fn build() -> Build {
    Build { version: env!("CARGO_PKG_VERSION"), commit: option_env!("SPATE_GIT_COMMIT").unwrap_or("unknown") }
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Cores the bench may use (its worker threads are pinned to them).
    pub cores: usize,
    /// `uname -r`.
    pub kernel: String,
    /// The data directory's sequential O_DIRECT write rate, measured before the phases.
    pub disk: Option<probe::DiskProbe>,
    /// One loopback TCP stream's rate (when the broker is on this machine).
    pub network: Option<probe::NetworkProbe>,
}

pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Now, as RFC 3339 in UTC to the second ("2025-03-01T12:34:56Z").
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// Seconds since the Unix epoch as RFC 3339 UTC.
pub fn rfc3339(epoch_secs: u64) -> String {
    let (days, secs) = ((epoch_secs / 86_400) as i64, epoch_secs % 86_400);
    let (year, month, day) = civil_date(days);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

/// The proleptic Gregorian date `days` after 1970-01-01: counted in
/// 400-year eras (146,097 days each) of years starting on 1 March, so that
/// the leap day falls at the end of a year.
fn civil_date(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(951_868_799), "2000-02-29T23:59:59Z");
        assert_eq!(rfc3339(951_868_800), "2000-03-01T00:00:00Z");
        assert_eq!(rfc3339(1_709_208_000), "2024-02-29T12:00:00Z");
        assert_eq!(rfc3339(4_102_444_800), "2100-01-01T00:00:00Z");
        assert!(now_rfc3339().starts_with("20"));
    }
}
