//! Request status codes, numbered as in the reference service's database.

use std::fmt;

/// The lifecycle state of an anchor request.
///
/// The numbers are the ones the reference service stores (`PENDING=0` ... `REPLACED=5`);
/// the API reports the names. `PROCESSING` and `READY` are never produced by this service
/// but stay representable for compatibility.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestStatus {
    /// Accepted, waiting for a batch.
    Pending = 0,
    /// Legacy: taken by a worker.
    Processing = 1,
    /// Anchored; a witness is available.
    Completed = 2,
    /// Terminal failure.
    Failed = 3,
    /// Legacy: selected for a batch.
    Ready = 4,
    /// A newer request for the same stream and origin superseded this one.
    Replaced = 5,
}

impl RequestStatus {
    /// The number stored in the database.
    pub fn code(self) -> i16 {
        self as i16
    }

    /// The status for a stored number, if it is one.
    pub fn from_code(code: i16) -> Option<Self> {
        Some(match code {
            0 => Self::Pending,
            1 => Self::Processing,
            2 => Self::Completed,
            3 => Self::Failed,
            4 => Self::Ready,
            5 => Self::Replaced,
            _ => return None,
        })
    }

    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Processing => "PROCESSING",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Ready => "READY",
            Self::Replaced => "REPLACED",
        }
    }

    /// Whether clients stop polling in this state.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Replaced)
    }
}

impl fmt::Display for RequestStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_match_the_reference_numbers() {
        let expected = [
            (0, "PENDING"),
            (1, "PROCESSING"),
            (2, "COMPLETED"),
            (3, "FAILED"),
            (4, "READY"),
            (5, "REPLACED"),
        ];
        for (code, name) in expected {
            let status = RequestStatus::from_code(code).unwrap();
            assert_eq!(status.code(), code);
            assert_eq!(status.as_str(), name);
        }
        assert_eq!(RequestStatus::from_code(6), None);
        assert_eq!(RequestStatus::from_code(-1), None);
    }

    #[test]
    fn terminal_states() {
        assert!(RequestStatus::Completed.is_terminal());
        assert!(RequestStatus::Replaced.is_terminal());
        assert!(RequestStatus::Failed.is_terminal());
        assert!(!RequestStatus::Pending.is_terminal());
        assert!(!RequestStatus::Ready.is_terminal());
    }
}
