//! The fee policy: EIP-1559 fees from the node's estimate under a cap, and the fees of a
//! replacement at the same nonce.

use crate::Fees;

/// Fees of a replacement must exceed the replaced transaction's by this fraction, on both
/// fields (1/8 = 12.5 %; geth and most clients require 10 %).
pub const REPLACEMENT_BUMP_DENOMINATOR: u128 = 8;

/// One gwei in wei.
pub const GWEI: u128 = 1_000_000_000;

/// How anchor transactions are priced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeePolicy {
    /// The most `maxFeePerGas` (wei per gas) any attempt may offer.
    pub max_fee_per_gas_cap: u128,
}

impl Default for FeePolicy {
    /// A 200 gwei cap.
    fn default() -> Self {
        Self {
            max_fee_per_gas_cap: 200 * GWEI,
        }
    }
}

/// `value` raised by at least 12.5 % (rounded up), and by at least 1 wei.
pub fn bumped(value: u128) -> u128 {
    value.saturating_add(value.div_ceil(REPLACEMENT_BUMP_DENOMINATOR).max(1))
}

impl FeePolicy {
    /// A policy with this cap on `maxFeePerGas`.
    pub fn with_cap(max_fee_per_gas_cap: u128) -> Self {
        Self {
            max_fee_per_gas_cap,
        }
    }

    /// Fees of a first attempt: the node's estimate, capped (the priority fee never exceeds
    /// the max fee).
    pub fn initial(&self, estimate: Fees) -> Fees {
        let max_fee_per_gas = estimate.max_fee_per_gas.min(self.max_fee_per_gas_cap);
        Fees {
            max_fee_per_gas,
            max_priority_fee_per_gas: estimate.max_priority_fee_per_gas.min(max_fee_per_gas),
        }
    }

    /// Fees of a replacement for a pending attempt paying `previous`: each field is at least
    /// 12.5 % above `previous` and at least the node's current `estimate`, and the max fee
    /// stays under the cap. `None` when the cap leaves no room for a replacement the node
    /// would accept: the pending attempt is then kept as it is.
    pub fn replacement(&self, previous: Fees, estimate: Fees) -> Option<Fees> {
        let min_priority = bumped(previous.max_priority_fee_per_gas);
        let min_max = bumped(previous.max_fee_per_gas);
        let priority = min_priority.max(estimate.max_priority_fee_per_gas);
        let max_fee = min_max
            .max(estimate.max_fee_per_gas)
            .max(priority)
            .min(self.max_fee_per_gas_cap);
        if max_fee < min_max {
            return None;
        }
        let priority = priority.min(max_fee);
        if priority < min_priority {
            return None;
        }
        Some(Fees {
            max_fee_per_gas: max_fee,
            max_priority_fee_per_gas: priority,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fees(max: u128, priority: u128) -> Fees {
        Fees {
            max_fee_per_gas: max,
            max_priority_fee_per_gas: priority,
        }
    }

    #[test]
    fn bumps_are_at_least_an_eighth_rounded_up_and_one_wei() {
        assert_eq!(bumped(800), 900);
        assert_eq!(bumped(801), 902);
        assert_eq!(bumped(1), 2);
        assert_eq!(bumped(0), 1);
        assert_eq!(bumped(u128::MAX), u128::MAX);
        for v in [7u128, 1_000, 1_500_000_000, 123_456_789_012] {
            assert!(bumped(v) * 8 >= v * 9, "{v}");
        }
    }

    #[test]
    fn the_first_attempt_uses_the_estimate_under_the_cap() {
        let policy = FeePolicy::with_cap(100 * GWEI);
        assert_eq!(
            policy.initial(fees(30 * GWEI, 2 * GWEI)),
            fees(30 * GWEI, 2 * GWEI)
        );
        assert_eq!(
            policy.initial(fees(300 * GWEI, 150 * GWEI)),
            fees(100 * GWEI, 100 * GWEI)
        );
    }

    #[test]
    fn a_replacement_raises_both_fields_by_at_least_12_5_percent() {
        let policy = FeePolicy::default();
        let previous = fees(20 * GWEI, 2 * GWEI);
        // The market did not move: the minimum bump.
        let next = policy.replacement(previous, previous).unwrap();
        assert_eq!(next, fees(22_500_000_000, 2_250_000_000));
        // The market moved up more: the estimate wins, field by field.
        let next = policy
            .replacement(previous, fees(60 * GWEI, 2 * GWEI))
            .unwrap();
        assert_eq!(next, fees(60 * GWEI, 2_250_000_000));
        let next = policy
            .replacement(previous, fees(21 * GWEI, 5 * GWEI))
            .unwrap();
        assert_eq!(next, fees(22_500_000_000, 5 * GWEI));
        // The market fell: still a valid replacement.
        let next = policy.replacement(previous, fees(GWEI, 1)).unwrap();
        assert_eq!(next, fees(22_500_000_000, 2_250_000_000));
    }

    #[test]
    fn the_cap_limits_replacements_and_stops_them_when_no_room_is_left() {
        let policy = FeePolicy::with_cap(50 * GWEI);
        let next = policy
            .replacement(fees(40 * GWEI, 2 * GWEI), fees(90 * GWEI, 3 * GWEI))
            .unwrap();
        assert_eq!(next, fees(50 * GWEI, 3 * GWEI), "capped, still ≥ 12.5 %");
        assert_eq!(
            policy.replacement(fees(45 * GWEI, 2 * GWEI), fees(90 * GWEI, 3 * GWEI)),
            None,
            "45 gwei + 12.5 % is above the cap"
        );
        // Room for the max fee (44 → 49.5), none for the priority fee (44.5 → 50.06).
        assert_eq!(
            policy.replacement(fees(44 * GWEI, 44_500_000_000), fees(GWEI, GWEI)),
            None
        );
        assert_eq!(
            policy.replacement(fees(44 * GWEI, 44 * GWEI), fees(GWEI, GWEI)),
            Some(fees(49_500_000_000, 49_500_000_000))
        );
    }

    #[test]
    fn the_max_fee_is_never_below_the_priority_fee() {
        let policy = FeePolicy::default();
        let next = policy
            .replacement(fees(GWEI, GWEI / 2), fees(GWEI, 3 * GWEI))
            .unwrap();
        assert!(next.max_fee_per_gas >= next.max_priority_fee_per_gas);
        assert_eq!(next, fees(3 * GWEI, 3 * GWEI));
    }
}
