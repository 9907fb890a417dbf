//! Launch backoff: a peer whose launches keep failing steps aside so a runner-up can host.
//!
//! The original looped forever on the same crash when an elected host's tunnels to its workers
//! silently dropped bytes (May 14 2026); two tiers now bench it: a short one for a burst of
//! failures, a long one when failures keep coming back after the short one expires.

use crate::time::Timestamp;
use std::collections::VecDeque;
use std::time::Duration;

/// Two failures within this window ...
pub const SHORT_WINDOW: Duration = Duration::from_secs(90);
pub const SHORT_FAILURES: usize = 2;
/// ... bench the peer for this long.
pub const SHORT_BACKOFF: Duration = Duration::from_secs(60);
/// Three failures within this window ...
pub const LONG_WINDOW: Duration = Duration::from_secs(600);
pub const LONG_FAILURES: usize = 3;
/// ... bench it for this long.
pub const LONG_BACKOFF: Duration = Duration::from_secs(300);

/// Failed launches of one model on this node, and whether it is benched (sans-IO: every method
/// takes `now`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchBackoff {
    /// Failures inside [`LONG_WINDOW`], oldest first.
    failures: VecDeque<Timestamp>,
    out_until: Option<Timestamp>,
}

impl LaunchBackoff {
    /// Records a failed launch. Returns the end of the backoff when this failure started one.
    /// Failures while already benched are not counted: nothing was launched.
    pub fn record_failure(&mut self, now: Timestamp) -> Option<Timestamp> {
        if self.is_out(now) {
            return None;
        }
        self.out_until = None;
        self.failures.push_back(now);
        while let Some(&first) = self.failures.front() {
            if now.saturating_since(first) > LONG_WINDOW {
                self.failures.pop_front();
            } else {
                break;
            }
        }
        let recent = self
            .failures
            .iter()
            .filter(|&&t| now.saturating_since(t) <= SHORT_WINDOW)
            .count();
        if self.failures.len() >= LONG_FAILURES {
            // The long tier starts from a clean slate, or the next failure would re-trip it.
            self.failures.clear();
            self.out_until = Some(now + LONG_BACKOFF);
        } else if recent >= SHORT_FAILURES {
            // History is kept: one more failure after the short bench escalates to the long one.
            self.out_until = Some(now + SHORT_BACKOFF);
        }
        self.out_until
    }

    /// A launch came up healthy: forget every failure.
    pub fn record_success(&mut self) {
        self.failures.clear();
        self.out_until = None;
    }

    /// Whether this node must not host the model at `now`.
    pub fn is_out(&self, now: Timestamp) -> bool {
        self.out_until.is_some_and(|until| now < until)
    }

    /// When the current backoff ends, if one is active at `now`.
    pub fn out_until(&self, now: Timestamp) -> Option<Timestamp> {
        self.out_until.filter(|&until| now < until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Timestamp {
        Timestamp::from_secs(secs)
    }

    #[test]
    fn two_failures_within_90_s_bench_the_host_for_60_s() {
        let mut b = LaunchBackoff::default();
        assert_eq!(b.record_failure(s(1_000)), None);
        assert!(!b.is_out(s(1_000)));
        assert_eq!(b.record_failure(s(1_080)), Some(s(1_140)));
        assert!(b.is_out(s(1_139)));
        assert!(!b.is_out(s(1_140)));
    }

    #[test]
    fn failures_further_apart_than_90_s_do_not_bench() {
        let mut b = LaunchBackoff::default();
        assert_eq!(b.record_failure(s(1_000)), None);
        assert_eq!(b.record_failure(s(1_091)), None);
        assert!(!b.is_out(s(1_091)));
    }

    #[test]
    fn a_third_failure_within_600_s_escalates_to_300_s() {
        let mut b = LaunchBackoff::default();
        b.record_failure(s(1_000));
        assert_eq!(b.record_failure(s(1_010)), Some(s(1_070)));
        // Benched: a failure reported now is not a launch and is not counted.
        assert_eq!(b.record_failure(s(1_050)), None);
        // Back in after the short bench, and the next launch fails too.
        assert_eq!(b.record_failure(s(1_200)), Some(s(1_500)));
        assert!(b.is_out(s(1_499)));
        assert_eq!(b.out_until(s(1_499)), Some(s(1_500)));
        assert_eq!(b.out_until(s(1_500)), None);
    }

    #[test]
    fn three_slow_failures_within_600_s_bench_for_300_s() {
        let mut b = LaunchBackoff::default();
        assert_eq!(b.record_failure(s(0)), None);
        assert_eq!(b.record_failure(s(200)), None);
        assert_eq!(b.record_failure(s(400)), Some(s(700)));
        // The long tier started from a clean slate.
        assert_eq!(b.record_failure(s(800)), None);
    }

    #[test]
    fn failures_older_than_600_s_are_forgotten() {
        let mut b = LaunchBackoff::default();
        b.record_failure(s(0));
        b.record_failure(s(300));
        assert_eq!(b.record_failure(s(601)), None);
    }

    #[test]
    fn a_healthy_launch_clears_history_and_bench() {
        let mut b = LaunchBackoff::default();
        b.record_failure(s(0));
        b.record_failure(s(10));
        assert!(b.is_out(s(20)));
        b.record_success();
        assert!(!b.is_out(s(20)));
        assert_eq!(b.record_failure(s(30)), None);
    }
}
