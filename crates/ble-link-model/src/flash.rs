//! Erase and program times of the device's SPI NOR flash, for charging processing time.

use std::time::Duration;

/// Timing of a SPI NOR flash: what the device model charges for erasing and programming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlashTiming {
    /// Time to erase one sector, in µs.
    pub sector_erase_us: u32,
    /// Time to program one page (or any part of one), in µs.
    pub page_program_us: u32,
    /// Program page size in bytes.
    pub page_size: u32,
    /// Erase sector size in bytes.
    pub sector_size: u32,
    /// Time to erase one block with the block-erase command, in µs.
    pub block_erase_us: u32,
    /// Erase block size in bytes (the 64 KiB block-erase command).
    pub block_size: u32,
}

impl FlashTiming {
    /// Typical timing of a common 4 MB (32 Mbit) SPI NOR flash, the size ESP32 modules carry.
    ///
    /// Source: Winbond W25Q32FV datasheet, "AC Electrical Characteristics" table:
    /// 4 KB sector erase time `tSE` 45 ms typical (400 ms maximum), page program time `tPP`
    /// 0.7 ms typical (3 ms maximum) for a 256-byte page. These are typical values, not
    /// worst cases. Newer parts of the family (W25Q32JV) list a shorter typical page program
    /// time with the same 45 ms sector erase, so 0.7 ms errs on the slow side; the sector
    /// erase, which dominates (45 ms per 4 KiB against 16 × 0.7 = 11.2 ms of programming), is
    /// the same. Same table: 64 KB block erase time `tBE2` 150 ms typical (1000 ms maximum),
    /// a third of the 16 × 45 ms its sectors take one by one.
    pub const TYPICAL_4MB_SPI_NOR: FlashTiming = FlashTiming {
        sector_erase_us: 45_000,
        page_program_us: 700,
        page_size: 256,
        sector_size: 4096,
        block_erase_us: 150_000,
        block_size: 65_536,
    };

    /// Returns the time to erase `sectors` sectors one at a time.
    pub const fn erase_time(&self, sectors: u64) -> Duration {
        Duration::from_micros(sectors * self.sector_erase_us as u64)
    }

    /// Returns the time to program `len` bytes at `offset`: one typical page program per page
    /// the range touches. A partial page is charged as a full one: Winbond's application note
    /// "Page Program Time for Winbond Serial NOR Flash Memory" says programming less than a
    /// page adds fixed overhead and recommends full pages. SPI transfer time is not counted.
    pub const fn program_time(&self, offset: u64, len: u64) -> Duration {
        Duration::from_micros(self.pages_touched(offset, len) * self.page_program_us as u64)
    }

    /// Returns the time to erase `blocks` blocks with the block-erase command.
    pub const fn block_erase_time(&self, blocks: u64) -> Duration {
        Duration::from_micros(blocks * self.block_erase_us as u64)
    }

    /// Returns the time to erase and program `bytes` bytes written from a block boundary (OTA
    /// slots are 64 KiB aligned) in full pages: whole blocks with the block-erase command, the
    /// rest sector by sector. The flash's lower bound for an image of that size.
    pub const fn write_time(&self, bytes: u64) -> Duration {
        let blocks = bytes / self.block_size as u64;
        let sectors = (bytes % self.block_size as u64).div_ceil(self.sector_size as u64);
        let pages = bytes.div_ceil(self.page_size as u64);
        Duration::from_micros(
            blocks * self.block_erase_us as u64
                + sectors * self.sector_erase_us as u64
                + pages * self.page_program_us as u64,
        )
    }

    /// Returns the sectors the range `offset..offset + len` touches.
    pub const fn sectors_touched(&self, offset: u64, len: u64) -> u64 {
        units_touched(offset, len, self.sector_size as u64)
    }

    /// Returns the pages the range `offset..offset + len` touches.
    pub const fn pages_touched(&self, offset: u64, len: u64) -> u64 {
        units_touched(offset, len, self.page_size as u64)
    }
}

impl Default for FlashTiming {
    fn default() -> Self {
        FlashTiming::TYPICAL_4MB_SPI_NOR
    }
}

const fn units_touched(offset: u64, len: u64, unit: u64) -> u64 {
    if len == 0 {
        return 0;
    }
    (offset + len).div_ceil(unit) - offset / unit
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: FlashTiming = FlashTiming::TYPICAL_4MB_SPI_NOR;

    #[test]
    fn a_mebibyte_takes_16_block_erases_and_4096_page_programs() {
        let expected = Duration::from_micros(16 * 150_000 + 4096 * 700);
        assert_eq!(T.write_time(1 << 20), expected);
        assert_eq!(expected, Duration::from_micros(5_267_200));
        let rate = crate::ceilings::flash(&T, 1 << 20);
        assert!((rate - (1 << 20) as f64 / 5.2672).abs() < 1e-6);
        // Sector by sector the same mebibyte would take 256 x 45 ms of erasing instead.
        assert_eq!(T.erase_time(256), Duration::from_micros(11_520_000));
    }

    #[test]
    fn a_partial_block_is_erased_by_sectors() {
        let bytes = (1 << 16) + 3 * 4096 + 10;
        let expected = Duration::from_micros(150_000 + 4 * 45_000 + 305 * 700);
        assert_eq!(T.write_time(bytes), expected);
    }

    #[test]
    fn partial_pages_and_sectors_count_whole() {
        assert_eq!(T.pages_touched(0, 256), 1);
        assert_eq!(T.pages_touched(200, 244), 2);
        assert_eq!(T.pages_touched(7, 0), 0);
        assert_eq!(T.program_time(200, 244), Duration::from_micros(1400));
        assert_eq!(T.sectors_touched(4095, 2), 2);
        assert_eq!(T.erase_time(2), Duration::from_millis(90));
        assert_eq!(T.write_time(1), Duration::from_micros(45_700));
    }
}
