//! Modelled time: whole microseconds since the connection was established.

use std::fmt;
use std::ops::Add;
use std::time::Duration;

/// A point in modelled time, in µs since the link was created (the first anchor point).
///
/// The model never reads a clock; every airtime and interval is a whole number of µs, so
/// times are exact integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    /// The moment the link was created.
    pub const ZERO: Instant = Instant(0);

    /// Returns the instant `us` µs after the link was created.
    pub const fn from_micros(us: u64) -> Self {
        Instant(us)
    }

    /// Returns the µs since the link was created.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// Returns the whole ms since the link was created (rounded down).
    pub const fn as_millis(self) -> u64 {
        self.0 / 1000
    }

    /// Returns the time since the link was created.
    pub const fn elapsed(self) -> Duration {
        Duration::from_micros(self.0)
    }

    /// Returns the time from `earlier` to `self`, zero if `earlier` is later.
    pub const fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;

    /// Adds `rhs`, rounded up to a whole µs.
    fn add(self, rhs: Duration) -> Instant {
        Instant(self.0.saturating_add(ceil_us(rhs)))
    }
}

impl fmt::Display for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03} ms", self.0 / 1000, self.0 % 1000)
    }
}

/// Returns `d` in µs, rounded up (the model's resolution is 1 µs).
pub(crate) fn ceil_us(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_up_to_whole_microseconds() {
        assert_eq!(ceil_us(Duration::from_nanos(1)), 1);
        assert_eq!(ceil_us(Duration::from_nanos(1000)), 1);
        assert_eq!(ceil_us(Duration::from_nanos(1001)), 2);
        assert_eq!(
            Instant::ZERO + Duration::from_millis(3),
            Instant::from_micros(3000)
        );
        assert_eq!(Instant::from_micros(7_500).to_string(), "7.500 ms");
    }
}
