//! Exponential backoff with full jitter for retries.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use crate::api::Backoff;

/// Ceiling of the delay after `failures` failures: `min(max, base * 2^(failures-1))`.
pub fn backoff_ceiling(policy: &Backoff, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(32);
    let seconds = policy
        .base_seconds
        .saturating_mul(1u64 << exponent)
        .min(policy.max_seconds);
    Duration::from_secs(seconds)
}

/// Full jitter: a delay uniformly spread in `[0, ceiling]`, derived from a stable key so that
/// planning stays a pure function while retries of different batches spread apart.
pub fn retry_delay(policy: &Backoff, failures: u32, key: impl Hash) -> Duration {
    backoff_ceiling(policy, failures).mul_f64(jitter(key))
}

fn jitter(key: impl Hash) -> f64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(base: u64, max: u64) -> Backoff {
        Backoff {
            base_seconds: base,
            max_seconds: max,
        }
    }

    #[test]
    fn ceiling_doubles_per_failure_up_to_the_maximum() {
        let p = policy(10, 600);
        let ceilings: Vec<u64> = (1..=8).map(|f| backoff_ceiling(&p, f).as_secs()).collect();
        assert_eq!(ceilings, vec![10, 20, 40, 80, 160, 320, 600, 600]);
    }

    #[test]
    fn huge_failure_counts_do_not_overflow() {
        assert_eq!(backoff_ceiling(&policy(10, 600), u32::MAX).as_secs(), 600);
    }

    #[test]
    fn delay_stays_within_bounds_and_spreads() {
        let p = policy(10, 600);
        let delays: Vec<Duration> = (0..200u64)
            .map(|k| retry_delay(&p, 3, ("run", k)))
            .collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(40)));
        let min = delays.iter().min().unwrap();
        let max = delays.iter().max().unwrap();
        assert!(
            *max - *min > Duration::from_secs(30),
            "jitter spreads: {min:?}..{max:?}"
        );
    }

    #[test]
    fn delay_is_stable_for_a_key() {
        let p = policy(10, 600);
        assert_eq!(
            retry_delay(&p, 2, ("r", 5u64)),
            retry_delay(&p, 2, ("r", 5u64))
        );
    }

    #[test]
    fn zero_base_means_no_delay() {
        assert_eq!(retry_delay(&policy(0, 0), 5, 1), Duration::ZERO);
    }
}
