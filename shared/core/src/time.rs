//! Client timestamps: the time a node says it made its request.
//!
//! js-ceramic sends ISO-8601 with `Z` and milliseconds; ceramic-one sends chrono's
//! `to_rfc3339()` (nanoseconds, `+00:00`). The reference accepted anything JavaScript's
//! `Date` parses; we accept RFC 3339 plus the two ISO-8601 shapes `Date` reads without an
//! offset (date only, and date-time without offset, both as UTC).

use std::fmt;

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};

/// Longest timestamp string accepted (an RFC 3339 date with nanoseconds is 35 characters).
pub const MAX_TIMESTAMP_LEN: usize = 128;

/// A client timestamp with nanosecond precision, stored as Unix nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientTimestamp {
    unix_nanos: i64,
}

/// Why a timestamp string was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TimestampError {
    /// Not a date the service understands.
    #[error("timestamp {0:?} is not an RFC 3339 / ISO 8601 date")]
    Unparseable(String),
    /// Outside the years 1677..2262 that nanoseconds in an i64 can express.
    #[error("timestamp {0:?} is out of range")]
    OutOfRange(String),
}

impl ClientTimestamp {
    /// Parse a client-supplied timestamp.
    pub fn parse(text: &str) -> Result<Self, TimestampError> {
        if text.len() > MAX_TIMESTAMP_LEN {
            return Err(TimestampError::Unparseable(format!(
                "{}…",
                text.chars().take(40).collect::<String>()
            )));
        }
        let trimmed = text.trim();
        let utc = if let Ok(dt) = DateTime::parse_from_rfc3339(trimmed) {
            dt.with_timezone(&Utc)
        } else if let Ok(naive) = NaiveDateTime::parse_from_str(trimmed, "%Y-%m-%dT%H:%M:%S%.f") {
            naive.and_utc()
        } else if let Ok(date) = NaiveDate::parse_from_str(trimmed, "%Y-%m-%d") {
            date.and_hms_opt(0, 0, 0)
                .ok_or_else(|| TimestampError::Unparseable(text.to_owned()))?
                .and_utc()
        } else {
            return Err(TimestampError::Unparseable(text.to_owned()));
        };
        let unix_nanos = utc
            .timestamp_nanos_opt()
            .ok_or_else(|| TimestampError::OutOfRange(text.to_owned()))?;
        Ok(Self { unix_nanos })
    }

    /// A timestamp from Unix nanoseconds.
    pub fn from_unix_nanos(unix_nanos: i64) -> Self {
        Self { unix_nanos }
    }

    /// Unix nanoseconds.
    pub fn unix_nanos(self) -> i64 {
        self.unix_nanos
    }

    /// The instant in UTC.
    pub fn to_utc(self) -> DateTime<Utc> {
        DateTime::from_timestamp_nanos(self.unix_nanos)
    }
}

impl fmt::Display for ClientTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_utc().to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_js_ceramic_and_ceramic_one_forms() {
        let js = ClientTimestamp::parse("2023-01-25T17:32:42.971Z").unwrap();
        assert_eq!(js.unix_nanos(), 1_674_667_962_971_000_000);
        let one = ClientTimestamp::parse("2024-07-30T00:11:15.631123456+00:00").unwrap();
        assert_eq!(one.unix_nanos() % 1_000_000_000, 631_123_456);
        assert_eq!(one.to_string(), "2024-07-30T00:11:15.631123456Z");
        let offset = ClientTimestamp::parse("2023-01-25T19:32:42.971+02:00").unwrap();
        assert_eq!(offset, js);
    }

    #[test]
    fn accepts_iso_forms_without_offset_as_utc() {
        assert_eq!(
            ClientTimestamp::parse("2023-01-25T17:32:42.971").unwrap(),
            ClientTimestamp::parse("2023-01-25T17:32:42.971Z").unwrap()
        );
        assert_eq!(
            ClientTimestamp::parse("2023-01-25").unwrap(),
            ClientTimestamp::parse("2023-01-25T00:00:00Z").unwrap()
        );
    }

    #[test]
    fn rejects_garbage_and_out_of_range() {
        for bad in [
            "",
            "yesterday",
            "2023-13-01T00:00:00Z",
            "1674667962971",
            "2023-01-25T25:00:00Z",
        ] {
            assert!(
                matches!(
                    ClientTimestamp::parse(bad),
                    Err(TimestampError::Unparseable(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            ClientTimestamp::parse("9999-01-01T00:00:00Z"),
            Err(TimestampError::OutOfRange(_))
        ));
    }
}
