//! Time as the caller tells it: the core never reads a clock.

/// A point in time, in milliseconds since an arbitrary epoch chosen by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Instant(pub u64);

impl Instant {
    /// Returns `self + ms`.
    pub fn after_ms(self, ms: u32) -> Instant {
        Instant(self.0.saturating_add(ms as u64))
    }
    /// Returns the milliseconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn since(self, earlier: Instant) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}
