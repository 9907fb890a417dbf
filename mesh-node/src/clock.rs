//! The node's one clock. Every timestamp the node hands to mesh-core comes from here.
//!
//! It reads `tokio::time::Instant` plus a base epoch captured once, so under turmoil (or tokio's
//! paused time) the whole node runs on virtual time: [`Clock::starting_at`] takes the simulated
//! epoch, and nothing else in mesh-node may call `SystemTime::now()` or `std::time::Instant`.

use mesh_core::Timestamp;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Monotonic time mapped onto Unix-epoch [`Timestamp`]s. Cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
    origin_epoch: Timestamp,
}

impl Clock {
    /// Wall-clock time: the Unix epoch is read once, here and nowhere else; afterwards time
    /// advances with tokio's monotonic clock (so a wall-clock step cannot make a TTFT negative).
    pub fn system() -> Self {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let micros = u64::try_from(since_epoch.as_micros()).unwrap_or(u64::MAX);
        Self::starting_at(Timestamp::from_micros(micros))
    }

    /// A clock that reads `epoch` now and advances with tokio time (virtual under turmoil).
    pub fn starting_at(epoch: Timestamp) -> Self {
        Clock {
            origin: Instant::now(),
            origin_epoch: epoch,
        }
    }

    pub fn now(&self) -> Timestamp {
        self.at(Instant::now())
    }

    /// The timestamp of a tokio instant taken earlier (or later) on this clock.
    pub fn at(&self, instant: Instant) -> Timestamp {
        self.origin_epoch + instant.saturating_duration_since(self.origin)
    }

    /// The current tokio instant, for deadlines (`tokio::time::sleep_until`).
    pub fn instant(&self) -> Instant {
        Instant::now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_tokio_time_so_turmoil_and_paused_tests_see_virtual_time() {
        let clock = Clock::starting_at(Timestamp::from_secs(1_000));
        assert_eq!(clock.now(), Timestamp::from_secs(1_000));
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(clock.now(), Timestamp::from_millis(1_001_500));
    }

    #[tokio::test]
    async fn system_clock_is_unix_time() {
        // 2024-01-01 as a floor: the clock is on the Unix epoch, not process-relative.
        assert!(Clock::system().now() > Timestamp::from_secs(1_704_067_200));
    }
}
