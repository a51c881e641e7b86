//! The runtime's clock.
//!
//! Everything in the access point and the features on top of it that decides by the wall
//! clock — leases, retry schedules, expiry of previews and requests, retention — reads
//! [`Clock::now`] instead of the system time, so that a test can hand the runtime a
//! [`Clock::manual`] clock and move time forward with [`Clock::advance`] rather than
//! sleeping. Waiting itself (tokio timers) stays on tokio's clock, which tests pause with
//! `tokio::time::pause`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;

/// A wall clock: the system's, or one that a test moves by hand. Cheap to clone; clones
/// share the same time.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    manual: Option<Arc<Mutex<OffsetDateTime>>>,
}

impl Clock {
    /// The system clock (what `varti serve` uses).
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// A clock that stands at `start` until [`Clock::advance`] moves it.
    pub fn manual(start: OffsetDateTime) -> Clock {
        Clock {
            manual: Some(Arc::new(Mutex::new(start))),
        }
    }

    /// The current time, in UTC.
    pub fn now(&self) -> OffsetDateTime {
        match &self.manual {
            None => OffsetDateTime::now_utc(),
            Some(t) => *t.lock().expect("clock lock"),
        }
    }

    /// Moves a manual clock forward by `by`.
    ///
    /// # Panics
    /// On the system clock: only a test's manual clock can be moved, and a test that
    /// tries to move the real one is wrong.
    pub fn advance(&self, by: Duration) {
        let t = self
            .manual
            .as_ref()
            .expect("Clock::advance on the system clock: use Clock::manual");
        *t.lock().expect("clock lock") += by;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_clones_share_it() {
        let start = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let clock = Clock::manual(start);
        let other = clock.clone();
        assert_eq!(clock.now(), start);
        other.advance(Duration::from_secs(90));
        assert_eq!(clock.now(), start + Duration::from_secs(90));
    }

    #[test]
    fn the_system_clock_follows_the_system_time() {
        let before = OffsetDateTime::now_utc();
        let now = Clock::system().now();
        assert!(now >= before && now <= OffsetDateTime::now_utc());
    }
}
