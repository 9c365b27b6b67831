//! Erase and program times of the device's SPI NOR flash, for charging processing time.
//!
//! [`FlashTiming::ops_time`] is the one rule: every erase and program command costs its
//! datasheet time, one after the other, with nothing else (SPI transfer, status polling)
//! counted. On the ESP32-C3/C6 esp-storage masks interrupts around each of these commands,
//! so the time is also radio downtime: report it as the `flash` part of
//! [`Link::peripheral_complete_work`](crate::Link::peripheral_complete_work).

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

    /// Worst-case timing of the same 4 MB (32 Mbit) SPI NOR flash: the datasheet maxima.
    ///
    /// Source: Winbond W25Q32JV datasheet, "AC Electrical Characteristics" table, maximum
    /// column: 4 KB sector erase time `tSE` 400 ms, page program time `tPP` 3 ms, 64 KB block
    /// erase time `tBE2` 2000 ms (typical 45 ms, 0.4 ms and 150 ms). Parts of other vendors
    /// on ESP32 modules differ, mostly in the block erase; the W25Q32JV maxima stand for
    /// them. They bound a good part over temperature and endurance, not an average device.
    pub const WORST_CASE_4MB_SPI_NOR: FlashTiming = FlashTiming {
        sector_erase_us: 400_000,
        page_program_us: 3_000,
        page_size: 256,
        sector_size: 4096,
        block_erase_us: 2_000_000,
        block_size: 65_536,
    };

    /// Returns the time `sector_erases` sector erases, `block_erases` block erases and
    /// `page_programs` page programs take one after the other: the flash-time rule every
    /// caller uses. SPI transfer and status polling are not counted.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use ble_link_model::FlashTiming;
    /// let t = FlashTiming::TYPICAL_4MB_SPI_NOR;
    /// assert_eq!(t.ops_time(1, 0, 16), Duration::from_micros(45_000 + 16 * 700));
    /// ```
    pub const fn ops_time(
        &self,
        sector_erases: u64,
        block_erases: u64,
        page_programs: u64,
    ) -> Duration {
        Duration::from_micros(
            sector_erases * self.sector_erase_us as u64
                + block_erases * self.block_erase_us as u64
                + page_programs * self.page_program_us as u64,
        )
    }

    /// Returns the time to erase `sectors` sectors one at a time.
    pub const fn erase_time(&self, sectors: u64) -> Duration {
        self.ops_time(sectors, 0, 0)
    }

    /// Returns the time to program `len` bytes at `offset`: one typical page program per page
    /// the range touches. A partial page is charged as a full one: Winbond's application note
    /// "Page Program Time for Winbond Serial NOR Flash Memory" says programming less than a
    /// page adds fixed overhead and recommends full pages. SPI transfer time is not counted.
    pub const fn program_time(&self, offset: u64, len: u64) -> Duration {
        self.ops_time(0, 0, self.pages_touched(offset, len))
    }

    /// Returns the time to erase `blocks` blocks with the block-erase command.
    pub const fn block_erase_time(&self, blocks: u64) -> Duration {
        self.ops_time(0, blocks, 0)
    }

    /// Returns the time to erase and program `bytes` bytes written from a block boundary (OTA
    /// slots are 64 KiB aligned) in full pages: whole blocks with the block-erase command, the
    /// rest sector by sector. The flash's lower bound for an image of that size.
    pub const fn write_time(&self, bytes: u64) -> Duration {
        let blocks = bytes / self.block_size as u64;
        let sectors = (bytes % self.block_size as u64).div_ceil(self.sector_size as u64);
        let pages = bytes.div_ceil(self.page_size as u64);
        self.ops_time(sectors, blocks, pages)
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
    fn ops_time_adds_every_command() {
        assert_eq!(T.ops_time(0, 0, 0), Duration::ZERO);
        assert_eq!(
            T.ops_time(2, 3, 5),
            Duration::from_micros(2 * 45_000 + 3 * 150_000 + 5 * 700)
        );
        let w = FlashTiming::WORST_CASE_4MB_SPI_NOR;
        assert_eq!(w.ops_time(1, 1, 1), Duration::from_micros(2_403_000));
        assert_eq!(w.block_erase_time(1), Duration::from_secs(2));
        // The worst case is the typical layout with slower commands.
        assert_eq!(
            (w.page_size, w.sector_size, w.block_size),
            (256, 4096, 65_536)
        );
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
