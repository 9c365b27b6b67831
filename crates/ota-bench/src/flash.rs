//! Flash time of a reference device that erases as it writes, charged with the one rule
//! every column pays by ([`FlashTiming::ops_time`]): a sector-erase command per 4 KiB sector
//! first reached, a page-program command per 256-byte page a write touches.

use std::time::Duration;

use ble_link_model::FlashTiming;

/// Flash time of one image written into an erased-on-demand slot from offset 0.
#[derive(Debug, Clone)]
pub struct FlashCost {
    timing: FlashTiming,
    /// Bytes of the slot erased so far (a whole number of sectors).
    erased: u64,
    /// Total charged so far.
    total: Duration,
}

impl FlashCost {
    /// A slot with nothing erased yet.
    pub fn new(timing: FlashTiming) -> Self {
        FlashCost {
            timing,
            erased: 0,
            total: Duration::ZERO,
        }
    }

    /// Erases every sector up to the one holding byte `end - 1` that is not erased yet, one
    /// sector-erase command each.
    pub fn erase_to(&mut self, end: u64) -> Duration {
        let sector = u64::from(self.timing.sector_size);
        let target = end.div_ceil(sector) * sector;
        if target <= self.erased {
            return Duration::ZERO;
        }
        let sectors = (target - self.erased) / sector;
        self.erased = target;
        let took = self.timing.ops_time(sectors, 0, 0);
        self.total += took;
        took
    }

    /// Programs `len` bytes at `offset` with one write call, erasing first what it reaches:
    /// a sector erase per new sector, a page program per page the range touches.
    pub fn program(&mut self, offset: u64, len: u64) -> Duration {
        let erase = self.erase_to(offset + len);
        let program = self
            .timing
            .ops_time(0, 0, self.timing.pages_touched(offset, len));
        self.total += program;
        erase + program
    }

    /// Returns everything charged so far.
    pub fn total(&self) -> Duration {
        self.total
    }
}
