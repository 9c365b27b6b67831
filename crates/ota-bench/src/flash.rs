//! Flash time of the reference devices, charged with the same rules as ours.
//!
//! The virtual ESP32 counts one sector-erase command per 4 KiB sector and one page-program
//! command per 256-byte page a write touches; `virtual_esp32::air` charges them with
//! [`FlashTiming`] (W25Q32FV typical times, cited there). [`FlashCost`] applies the same two
//! rules to a reference device's writes, so every column pays the same price for the same
//! flash operations.

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
    /// sector-erase command each (as ours: sector by sector just ahead of the writes).
    pub fn erase_to(&mut self, end: u64) -> Duration {
        let sector = u64::from(self.timing.sector_size);
        let target = end.div_ceil(sector) * sector;
        if target <= self.erased {
            return Duration::ZERO;
        }
        let took = self.timing.erase_time((target - self.erased) / sector);
        self.erased = target;
        self.total += took;
        took
    }

    /// Programs `len` bytes at `offset` with one write call, erasing first what it reaches:
    /// a sector erase per new sector, a page program per page the range touches.
    pub fn program(&mut self, offset: u64, len: u64) -> Duration {
        let erase = self.erase_to(offset + len);
        let program = self.timing.program_time(offset, len);
        self.total += program;
        erase + program
    }

    /// Returns everything charged so far.
    pub fn total(&self) -> Duration {
        self.total
    }
}
